"""packaging/: the PyInstaller onedir and the install step, driven as a runtime would."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conf import dispatch
from tests.support.install import installed_bin_dir, packaging_install

pytestmark = pytest.mark.timeout(600)  # the first call may build (about a minute)
PYINSTALLER_COOKIE = b"MEI\014\013\012\013\016"  # marks an archive appended to a bootloader


def run(exe: str, command: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([exe], input=stdin, env={"CNI_COMMAND": command, "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("form", ["frozen", "script"])
def test_install_puts_runnable_plugins_and_the_conflist_under_root(tmp_path, form):
    installed = packaging_install.install(str(tmp_path), form=form)
    bin_dir = tmp_path / "opt" / "cni" / "bin"
    for name in ("flannelette", "flannelette-ipam"):
        assert installed[name] == bin_dir / name
        out = run(str(bin_dir / name), "VERSION", b'{"cniVersion":"0.4.0"}')
        assert out.returncode == 0, out.stderr
        assert out.stdout == dispatch.run({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')[1]
    if form == "frozen":  # a real copy under <root>/opt/flannelette, linked relatively
        home = tmp_path / "opt" / "flannelette"
        assert home.is_symlink() and (tmp_path / "opt" / os.readlink(home)).is_dir()
        assert os.readlink(bin_dir / "flannelette") == "../../flannelette/flannelette"
    conflist = json.loads((tmp_path / "etc" / "cni" / "net.d" / "10-flannelette.conflist").read_text())
    assert (conflist["cniVersion"], conflist["name"]) == ("1.0.0", "cbr0")
    assert [p["type"] for p in conflist["plugins"]] == ["flannelette", "portmap"]
    assert conflist["plugins"][1]["capabilities"] == {"portMappings": True}


def test_both_names_run_their_own_plugin(tmp_path):
    """flannelette-ipam is the same binary; it must run the IPAM plugin, not the bridge plugin."""
    bin_dir = installed_bin_dir(tmp_path)
    conf = json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "x", "daemonSocket": "",
                       "ipam": {"type": "flannelette-ipam", "subnetFile": str(tmp_path / "missing.env"),
                                "dataDir": str(tmp_path / "ipam")}}).encode()
    outs = {name: run(os.path.join(bin_dir, name), "STATUS", conf) for name in ("flannelette", "flannelette-ipam")}
    for out in outs.values():
        assert out.returncode == 1 and b"Traceback" not in out.stderr
        assert json.loads(out.stdout)["code"] in (11, 50)
    # The two plugins word the missing subnet.env differently: proof that each ran its own code.
    assert json.loads(outs["flannelette"].stdout)["msg"] != json.loads(outs["flannelette-ipam"].stdout)["msg"]


def test_the_frozen_shim_starts_without_the_plugin_stack():
    """`flannelette` is packaging/launcher.c: its interpreter can import only the shim, the
    encodings package and extension modules, so nothing heavy can creep into a fast-path
    start-up; the in-process stack lives in flannelette-full."""
    from PyInstaller.archive.readers import CArchiveReader

    onedir = packaging_install.build.build()
    lean = onedir / "_internal" / "lean"
    assert sorted(p.name for p in lean.iterdir()) == ["encodings", "flannelette_shim.pyc"]
    assert {p.suffix for p in (lean / "encodings").iterdir()} == {".pyc"}
    with open(onedir / "flannelette", "rb") as f:
        assert f.read(4) == b"\x7fELF" and PYINSTALLER_COOKIE not in f.read()
    traced = subprocess.run(["strace", "-f", "-e", "trace=openat,execve", str(onedir / "flannelette")],
                            input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=60)
    assert traced.returncode == 0 and b"supportedVersions" in traced.stdout
    opened = [line for line in traced.stderr.decode().splitlines() if "openat(" in line and "= -1" not in line]
    assert not [line for line in opened if "base_library.zip" in line or "flannelette-full" in line]
    assert traced.stderr.count(b"execve(") == 1  # no bootloader restart
    full = CArchiveReader(str(onedir / "flannelette-full"))
    full_modules = set(full.open_embedded_archive("PYZ.pyz").toc)
    assert {"cni_plugin.handlers", "cni_plugin.netlink", "cni_plugin.status", "ipam.main", "pydantic"} <= full_modules
    assert not any(m.split(".")[0] == "pyroute2" for m in full_modules)  # hand-packed netlink only
    assert not any(m.split(".")[0] in ("daemon", "grpc", "pyetcd", "google") for m in full_modules)


def test_the_frozen_daemon_carries_the_etcd_client_and_no_start_up_hooks():
    """flanneletted shares the onedir's libraries but has its own archive: the etcd client
    (grpc, protobuf, pyetcd) and the lazily imported backends must all be in it."""
    from PyInstaller.archive.readers import CArchiveReader

    onedir = packaging_install.build.build()
    daemon = CArchiveReader(str(onedir / "flanneletted"))
    modules = set(daemon.open_embedded_archive("PYZ.pyz").toc)
    assert {"daemon.main", "daemon.dataplane.backends.vxlan", "daemon.dataplane.backends.hostgw", "daemon.dataplane.masquerade",
            "daemon.fastpath.server", "cni_plugin.handlers", "pyetcd", "grpc", "google.protobuf"} <= modules
    assert not any(m.split(".")[0] == "pyroute2" for m in modules)
    assert not any(name.startswith("pyi_rth_") for name in daemon.toc)  # inspect's hook: ~90 modules
    grpc_ext = list((onedir / "_internal" / "grpc" / "_cython").glob("cygrpc*.so"))
    assert len(grpc_ext) == 1  # one shared copy of the extension modules
