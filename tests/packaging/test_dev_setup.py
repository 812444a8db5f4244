"""packaging/dev-setup.sh decides what a machine lacks: a fresh Debian 12 (python3 without
venv, no shared libpython and no headers, no objdump, no C compiler) against this
machine's pyenv Python.

A copy of the script runs in a scratch checkout (no .venv) with stand-ins for dpkg,
ldconfig and Debian's python3 first on PATH; `--missing` only prints, so nothing is installed.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "packaging" / "dev-setup.sh"
TOOLS = ["etcd-server", "etcd-client", "containernetworking-plugins", "iproute2", "iptables",
         "tcpdump", "iputils-ping", "strace", "procps", "curl", "openssl", "ca-certificates", "podman",
         "busybox-static", "iperf3"]
BASICS = ["bash", "env", "dirname", "tr", "sed", "grep", "readlink", "cat"]

FAKE_DPKG = """#!/bin/sh
# -s PKG: installed when listed in $INSTALLED; -S PATH: owned when it is $DEBIAN_OWNED
case $1 in
  -s) for p in $INSTALLED; do [ "$p" = "$2" ] && exit 0; done; exit 1 ;;
  -S) [ "$2" = "$DEBIAN_OWNED" ] && { echo "python3.11-minimal: $2"; exit 0; }; exit 1 ;;
esac
exit 2
"""
# Debian 12's python3 before python3-venv and libpython3.11(-dev): no ensurepip, no
# libpython .so, no Python.h
FAKE_DEBIAN_PYTHON = """#!/bin/sh
case "$2" in
  "import ensurepip") exit 1 ;;
  *sysconfig*) echo "libpython3.11.so.1.0 {libdir} 3.11 {libdir}/include" ;;
esac
"""
SHARED_AND_HEADERS = ("libpython3.11.so.1.0", "include/Python.h")


def fake_machine(tmp_path: pathlib.Path, with_build_tools: bool) -> tuple[pathlib.Path, pathlib.Path]:
    checkout, bin_dir = tmp_path / "checkout", tmp_path / "bin"
    (checkout / "packaging").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "packaging" / "dev-setup.sh")
    bin_dir.mkdir()
    for tool in BASICS + (["objdump", "cc"] if with_build_tools else []):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, text in {"dpkg": FAKE_DPKG, "ldconfig": "#!/bin/sh\nexit 0\n",
                       "python3": FAKE_DEBIAN_PYTHON.format(libdir=tmp_path / "no-lib")}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return checkout, bin_dir


def missing(checkout: pathlib.Path, bin_dir: pathlib.Path, **env: str) -> list[str]:
    proc = subprocess.run([str(bin_dir / "bash"), str(checkout / "packaging" / "dev-setup.sh"), "--missing"],
                          env={"PATH": str(bin_dir), **env}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def provide(lib: pathlib.Path, *files: str) -> None:
    for name in files:
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"")


def test_fresh_debian_gets_venv_shared_libpython_headers_and_build_tools(tmp_path):
    checkout, bin_dir = fake_machine(tmp_path, with_build_tools=False)
    owned = str(bin_dir / "python3")
    build = ["binutils", "gcc", "python3-venv", "libpython3.11", "libpython3.11-dev"]
    assert missing(checkout, bin_dir, INSTALLED="", DEBIAN_OWNED=owned) == TOOLS + build
    # with the test tools present only PyInstaller's, the launcher's and venv's needs remain
    assert missing(checkout, bin_dir, INSTALLED=" ".join(TOOLS), DEBIAN_OWNED=owned) == build
    provide(tmp_path / "no-lib", "libpython3.11.so.1.0")
    assert missing(checkout, bin_dir, INSTALLED=" ".join(TOOLS), DEBIAN_OWNED=owned) == \
        ["binutils", "gcc", "python3-venv", "libpython3.11-dev"]


def test_nothing_is_asked_for_what_is_there(tmp_path):
    checkout, bin_dir = fake_machine(tmp_path, with_build_tools=True)
    lib = tmp_path / "no-lib"
    provide(lib, *SHARED_AND_HEADERS)
    (bin_dir / "python3").write_text(FAKE_DEBIAN_PYTHON.replace('"import ensurepip") exit 1',
                                                                '"import ensurepip") exit 0')
                                     .format(libdir=lib))
    assert missing(checkout, bin_dir, INSTALLED=" ".join(TOOLS), DEBIAN_OWNED="") == []


def test_a_python_apt_cannot_fix_is_reported_not_installed_for(tmp_path):
    """A pyenv build without --enable-shared: no Debian package helps, so a warning, no package."""
    checkout, bin_dir = fake_machine(tmp_path, with_build_tools=True)
    provide(tmp_path / "no-lib", "include/Python.h")
    proc = subprocess.run([str(bin_dir / "bash"), str(checkout / "packaging" / "dev-setup.sh"), "--missing"],
                          env={"PATH": str(bin_dir), "INSTALLED": " ".join(TOOLS), "DEBIAN_OWNED": ""},
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == ["python3-venv"]
    assert "no shared libpython3.11.so.1.0" in proc.stderr


def test_this_machine_needs_nothing_more():
    """The CI machine and this one (pyenv Python, .venv present, packages installed)."""
    proc = subprocess.run(["bash", str(SCRIPT), "--missing"], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
