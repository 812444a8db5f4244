"""Invoke a CNI executable exactly as a runtime does: CNI_* env + config on stdin.

`invoke` returns (exit status, parsed stdout JSON or None, stderr text). It fails
the test when stdout holds anything but one JSON object (or nothing), since the
spec reserves stdout for the result or the error.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from typing import NamedTuple, Optional, Sequence

VENV_BIN = os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "bin")
REFERENCE_PLUGINS = "/usr/lib/cni"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Outcome(NamedTuple):
    status: int
    result: Optional[dict]
    stderr: str


def our_executable(name: str) -> str:
    """Absolute path of one of our console scripts in the project venv."""
    path = os.path.realpath(os.path.join(VENV_BIN, name))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing; run `make setup`")
    return path


def make_cni_path(directory: str, ours: Sequence[str] = ("flannelette-ipam",),
                  reference: str = REFERENCE_PLUGINS) -> str:
    """A CNI_PATH dir: symlinks to every reference plugin and to our executables."""
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(reference):
        for name in os.listdir(reference):
            os.symlink(os.path.join(reference, name), os.path.join(directory, name))
    for name in ours:
        os.symlink(our_executable(name), os.path.join(directory, name))
    return directory


def cni_env(command: str, *, container_id: str = "", netns: str = "", ifname: str = "",
            cni_path: str = "", cni_args: str = "", extra_env: Optional[dict] = None,
            drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment a runtime passes; `drop` removes variables to test their absence."""
    env = {"PATH": BASE_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path, "CNI_ARGS": cni_args}
    env = {k: v for k, v in env.items() if v or k == "CNI_COMMAND"}
    env.update(extra_env or {})
    for key in drop:
        env.pop(key, None)
    return env


def invoke(exe: str, command: str, config: dict | bytes | None = None, *,
           container_id: str = "", netns: str = "", ifname: str = "", cni_path: str = "",
           cni_args: str = "", extra_env: Optional[dict] = None, drop: Sequence[str] = (),
           prefix: Sequence[str] = (), timeout: float = 60) -> Outcome:
    """Run `exe` for one CNI command. `prefix` wraps it (e.g. ip netns exec NAME)."""
    if isinstance(config, dict):
        stdin = json.dumps(config).encode()
    else:
        stdin = config or b""
    env = cni_env(command, container_id=container_id, netns=netns, ifname=ifname,
                  cni_path=cni_path, cni_args=cni_args, extra_env=extra_env, drop=drop)
    proc = subprocess.run([*prefix, exe], input=stdin, env=env, capture_output=True,
                          timeout=timeout)
    return Outcome(proc.returncode, parse_stdout(proc.stdout), proc.stderr.decode(errors="replace"))


def parse_stdout(stdout: bytes) -> Optional[dict]:
    if not stdout.strip():
        return None
    try:
        out = json.loads(stdout)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document: {stdout[:300]!r}") from None
    assert isinstance(out, dict), f"stdout JSON is not an object: {out!r}"
    return out


def tree_snapshot(root: str) -> dict[str, bytes]:
    """Every file under `root` with its content (for "nothing changed" asserts)."""
    snap: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        snap[rel + "/"] = b""
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                snap[os.path.join(rel, name)] = f.read()
    return snap


def world_writable(root: str) -> list[str]:
    """Every file or directory under `root` (itself included) that anyone may write, with its mode."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
                bad.append(f"{os.path.normpath(os.path.relpath(path, root))} {stat.filemode(mode)}")
    return bad
