"""The installed CNI artefact for tests and benchmarks, and a fast-path server to go with it.

`installed_bin_dir(tmp)` builds the PyInstaller onedir if the sources changed (cached in
build/pyinstaller/), installs it under `tmp` with packaging/install.py exactly as on a
node (bin symlinks to <tmp>/opt/flannelette, the conflist in <tmp>/etc/cni/net.d) and
adds the reference plugins, so the returned dir is a complete CNI_PATH.
`FastPathServer` runs `python -m daemon.fastpath.server` inside a netns (the handlers work
on the netns the daemon runs in, like flanneletted on a node).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent.parent


def _load_packaging_install():
    spec = importlib.util.spec_from_file_location("flannelette_install", REPO / "packaging" / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


packaging_install = sys.modules.get("flannelette_install") or _load_packaging_install()
packaging_build = packaging_install.build

REFERENCE_PLUGINS = "/usr/lib/cni"
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")


def installed_bin_dir(tmp: str | os.PathLike, form: str = "frozen", copy: bool = False) -> str:
    """Install under `tmp` and return its CNI bin dir (our plugins + the reference ones).

    frozen installs link <tmp>/opt/flannelette to the cached build instead of copying
    26 MB per test; `copy=True` does the real copy."""
    root = Path(tmp)
    installed = packaging_install.install(str(root), form=form, link=not copy)
    bin_dir = installed["flannelette"].parent
    if os.path.isdir(REFERENCE_PLUGINS):
        for name in os.listdir(REFERENCE_PLUGINS):
            link = bin_dir / name
            if not link.exists() and not link.is_symlink():
                os.symlink(os.path.join(REFERENCE_PLUGINS, name), link)
    return str(bin_dir)


def build_artifact() -> Path:
    return packaging_build.build()


class FastPathServer:
    """`python -m daemon.fastpath.server --socket PATH` inside netns `netns_name` (None: here)."""

    def __init__(self, socket_path: str, netns_name: Optional[str] = None, workers: int = 8,
                 log_path: Optional[str] = None, log_level: str = "DEBUG", step_times: Optional[str] = None):
        self.socket_path = socket_path
        self.log_path = log_path or socket_path + ".log"
        prefix = ["ip", "netns", "exec", netns_name] if netns_name else []
        cmd = [*prefix, VENV_PYTHON, "-m", "daemon.fastpath.server", "--socket", socket_path,
               "--workers", str(workers), "--log-level", log_level]
        if step_times:  # each request's step durations, written there when the server stops
            cmd += ["--step-times", step_times]
        os.makedirs(os.path.dirname(socket_path), exist_ok=True)
        self._cmd = cmd
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        # The server renames its socket into place only once it listens; a socket left by a
        # killed server exists too but refuses connections.
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.proc.poll() is not None:
                raise RuntimeError(f"cni_server exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"cni_server did not listen within {timeout}s: {self.log()}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no clean-up runs, the socket stays."""
        self.proc.send_signal(signal.SIGKILL)  # `ip netns exec` exec'd python: this is the server
        self.proc.wait()
        self._log.close()

    def restart(self) -> None:
        """A new server on the same socket after `kill` (or `stop`), as systemd restarts one."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> "FastPathServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
