"""packaging/install.py: the whole node layout under a temporary root, and the container
image's install-cni laying the plugin out the same way."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shlex
import subprocess

import pytest

from conf import dispatch
from daemon.settings import parse_settings
from tests.support.install import packaging_install
from tests.unit.test_shipped import parse_unit

pytestmark = pytest.mark.timeout(600)  # the first call may build (about a minute)

REPO = pathlib.Path(__file__).resolve().parents[2]
INSTALL_CNI = REPO / "packaging" / "image" / "install-cni"
SHIPPED = REPO / "conf" / "shipped"
VERSION_IN = b'{"cniVersion":"0.4.0"}'


def run(exe: pathlib.Path, *args: str, command: str = "VERSION", stdin: bytes = VERSION_IN):
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, timeout=60,
                          env={"CNI_COMMAND": command, "PATH": "/usr/bin:/bin"})


def versions(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (root / "opt").iterdir() if p.name.startswith("flannelette-"))


@pytest.fixture
def fake_onedir(tmp_path) -> pathlib.Path:
    """A stand-in build: each executable prints its own name and the name it was run as."""
    onedir = tmp_path / "fake-build"
    (onedir / "_internal").mkdir(parents=True)
    (onedir / "_internal" / "libpython.so").write_bytes(b"\x7fELF not really")
    for exe in packaging_install.build.EXECUTABLES:
        (onedir / exe).write_text(f'#!/bin/sh\necho "{exe} $(basename "$0")"\n')
        (onedir / exe).chmod(0o755)
    return onedir


def test_frozen_install_lays_out_a_runnable_node(tmp_path):
    installed = packaging_install.install(str(tmp_path))
    home = tmp_path / "opt" / "flannelette"
    assert home.is_symlink() and os.readlink(home) in versions(tmp_path)  # relative, versioned
    expected_links = {"opt/cni/bin/flannelette": "../../flannelette/flannelette",
                      "opt/cni/bin/flannelette-ipam": "../../flannelette/flannelette-full",
                      "usr/local/bin/flanneletted": "../../../opt/flannelette/flanneletted"}
    for path, target in expected_links.items():
        assert os.readlink(tmp_path / path) == target, path
    # every executable runs through its link, as a runtime or systemd runs it
    expected = dispatch.run({}, {"CNI_COMMAND": "VERSION"}, VERSION_IN)[1]
    for name in ("flannelette", "flannelette-ipam"):
        out = run(installed[name])
        assert (out.returncode, out.stdout) == (0, expected), out.stderr
    daemon = run(installed["flanneletted"], "--help")
    assert daemon.returncode == 0 and b"--etcd-endpoints" in daemon.stdout, daemon.stderr
    bad = run(installed["flanneletted"], "--no-such-flag")
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    # the unit runs the daemon installed here, reads the defaults installed here
    unit = parse_unit((tmp_path / "etc/systemd/system/flanneletted.service").read_text())
    assert (tmp_path / "etc/systemd/system/flanneletted.service").read_bytes() == \
        (SHIPPED / "flanneletted.service").read_bytes()
    exec_start = shlex.split(unit["Service"]["ExecStart"][0])
    assert (tmp_path / exec_start[0].lstrip("/")).resolve() == (home / "flanneletted").resolve()
    (env_file,) = unit["Service"]["EnvironmentFile"]
    defaults = tmp_path / env_file.lstrip("-/")
    assert defaults == installed["defaults"]
    env = dict(line.split("=", 1) for line in defaults.read_text().splitlines()
               if line and not line.startswith("#"))
    assert parse_settings(exec_start[1:], env).etcd_endpoints  # the example is valid as shipped
    conflist = json.loads((tmp_path / "etc/cni/net.d/10-flannelette.conflist").read_text())
    assert conflist == json.loads((SHIPPED / "10-flannelette.conflist").read_text())


def test_reinstall_flips_to_a_new_copy_keeps_the_previous_and_the_site_settings(tmp_path, fake_onedir):
    legacy = tmp_path / "opt" / "flannelette"  # a plain directory from an older install
    legacy.mkdir(parents=True)
    (legacy / "stale-file").write_text("old")
    installed = packaging_install.install(str(tmp_path), onedir=fake_onedir)
    installed["defaults"].write_text("FLANNELD_ETCD_ENDPOINTS=http://10.0.0.5:2379\n")
    first = os.readlink(legacy)
    packaging_install.install(str(tmp_path), onedir=fake_onedir)
    second = os.readlink(legacy)
    packaging_install.install(str(tmp_path), onedir=fake_onedir)
    third = os.readlink(legacy)
    assert len({first, second, third}) == 3
    assert versions(tmp_path) == sorted([second, third])  # the one replaced is kept, older go
    assert not (legacy / "stale-file").exists() and not (tmp_path / "opt" / "flannelette.old").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".new") or p.name.startswith(".flannelette")]
    assert installed["defaults"].read_text() == "FLANNELD_ETCD_ENDPOINTS=http://10.0.0.5:2379\n"
    assert run(installed["flannelette-ipam"]).stdout == b"flannelette-full flannelette-ipam\n"


def test_cli_installs_an_existing_build_and_refuses_what_is_not_one(tmp_path, fake_onedir, capsys):
    root = tmp_path / "root"
    assert packaging_install.main(["--root", str(root), "--onedir", str(fake_onedir),
                                   "--cni-bin-dir", "/usr/libexec/cni", "--conf-dir", "/etc/cni/conf"]) == 0
    assert run(root / "usr/libexec/cni/flannelette").stdout == b"flannelette flannelette\n"
    assert (root / "etc/cni/conf/10-flannelette.conflist").is_file()
    assert run(root / "usr/local/bin/flanneletted").stdout == b"flanneletted flanneletted\n"
    (fake_onedir / "flanneletted").unlink()
    other = tmp_path / "other"
    assert packaging_install.main(["--root", str(other), "--onedir", str(fake_onedir)]) == 1
    assert "not a flannelette build: no flanneletted" in capsys.readouterr().err
    assert not (other / "opt" / "flannelette").exists()


def test_script_form_installs_runnable_stubs_for_all_three(tmp_path):
    installed = packaging_install.install(str(tmp_path), form="script")
    expected = dispatch.run({}, {"CNI_COMMAND": "VERSION"}, VERSION_IN)[1]
    for name in ("flannelette", "flannelette-ipam"):
        assert run(installed[name]).stdout == expected
    out = run(installed["flanneletted"], "--help")
    assert out.returncode == 0 and b"--etcd-endpoints" in out.stdout
    assert not (tmp_path / "opt" / "flannelette").exists()  # no onedir in this form


def tree(root: pathlib.Path) -> dict[str, tuple]:
    """Every path under root -> (kind, link target or content hash, mode), with the
    versioned directories' names replaced, so two installs compare equal."""
    current = os.readlink(root / "opt" / "flannelette")
    names = {v: "<current>" if v == current else "<previous>" for v in versions(root)}

    def normal(text: str) -> str:
        for name, label in names.items():
            text = text.replace(name, label)
        return text

    out = {}
    for path in sorted(root.rglob("*")):
        rel = normal(str(path.relative_to(root)))
        if path.is_symlink():
            out[rel] = ("link", normal(os.readlink(path)))
        elif path.is_dir():
            out[rel] = ("dir", path.stat().st_mode & 0o7777)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o7777)
    return out


def test_install_cni_and_install_py_lay_out_the_same_tree(tmp_path, fake_onedir):
    by_py, by_sh = tmp_path / "py", tmp_path / "sh"
    conflist = SHIPPED / "10-flannelette.conflist"
    for round_ in range(3):  # a first install and two upgrades (one version replaced, one removed)
        packaging_install.install(str(by_py), onedir=fake_onedir, cni_only=True)
        subprocess.run([str(INSTALL_CNI), f"--root={by_sh}", f"--onedir={fake_onedir}",
                        f"--conflist={conflist}"], check=True, capture_output=True)
        layout = tree(by_py)
        assert layout == tree(by_sh)
        assert len(versions(by_py)) == min(round_ + 1, 2)
    assert not (by_py / "usr").exists()  # --cni-only: no daemon link, no unit
    assert layout["opt/cni/bin/flannelette-ipam"] == ("link", "../../flannelette/flannelette-full")
    assert layout["opt/flannelette"] == ("link", "<current>")
    assert "etc/cni/net.d/10-flannelette.conflist" in layout


def test_install_cni_puts_a_runnable_plugin_from_the_real_build(tmp_path):
    onedir = packaging_install.build.build()
    subprocess.run([str(INSTALL_CNI), f"--root={tmp_path}", f"--onedir={onedir}",
                    f"--conflist={SHIPPED / '10-flannelette.conflist'}"], check=True, capture_output=True)
    expected = dispatch.run({}, {"CNI_COMMAND": "VERSION"}, VERSION_IN)[1]
    for name in ("flannelette", "flannelette-ipam"):
        out = run(tmp_path / "opt" / "cni" / "bin" / name)
        assert (out.returncode, out.stdout) == (0, expected), out.stderr


def test_install_cni_refuses_an_incomplete_onedir(tmp_path, fake_onedir):
    (fake_onedir / "flannelette-full").unlink()
    proc = subprocess.run([str(INSTALL_CNI), f"--root={tmp_path}/host", f"--onedir={fake_onedir}",
                           f"--conflist={SHIPPED / '10-flannelette.conflist'}"], capture_output=True, text=True)
    assert proc.returncode == 1 and "no executable" in proc.stderr and "flannelette-full" in proc.stderr
    assert not (tmp_path / "host").exists()
