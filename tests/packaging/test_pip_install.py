"""A real `pip install` of this project into a scratch venv: the `flannelette` console script it
makes is the lean shim, so it takes the fast path to the daemon's socket and loads no pydantic.

The scratch venv gets our packages only (--no-deps): a script that fell back to the in-process
stack could not even import it, so the handler's answer proves the fast path.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from daemon.fastpath.server import CniServer
from tests.unit.test_shim import cni_env, conf_bytes, echo_add, imported_modules  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600)  # pip builds the wheel in an isolated environment
REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("conf", "ipam", "cni_plugin", "daemon")


def pip_install_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """The project's sources copied (the build writes into its source tree) and installed; the venv's bin."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                          "-q", "--no-deps", str(src)], capture_output=True, text=True, timeout=540)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin"


def test_the_pip_installed_flannelette_is_the_lean_shim_on_the_fast_path(tmp_path, cni_env):
    bin_dir = pip_install_copy(tmp_path)
    script = (bin_dir / "flannelette").read_text()
    assert "from cni_plugin.shim import main" in script
    for name in ("flannelette-ipam", "flanneletted"):
        assert os.access(bin_dir / name, os.X_OK)

    server = CniServer(str(tmp_path / "run" / "cni.sock"), {"ADD": echo_add})
    server.start()
    try:
        stdin = conf_bytes(server.socket_path)
        proc = subprocess.run([str(bin_dir / "flannelette")], input=stdin, capture_output=True, timeout=60,
                              env={**cni_env, "PYTHONPROFILEIMPORTTIME": "1"})
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0", "container": "c0ffee", "ifname": "eth0",
        "args": {"K8S_POD_NAME": "web", "IgnoreUnknown": "1"}, "stdinLen": len(stdin), "netnsFdMatches": True}
    loaded = imported_modules(proc.stderr)
    assert "cni_plugin.shim" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("pydantic", "conf", "ipam", "daemon")]
