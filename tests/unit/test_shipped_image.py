"""The container image: the Dockerfile provides what the manifest runs, and the
install-cni script lays the plugin out on a host as packaging/install.py does."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "packaging" / "Dockerfile"
INSTALL_CNI = REPO / "packaging" / "image" / "install-cni"
CONFLIST = REPO / "conf" / "shipped" / "10-flannelette.conflist"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_copies_only_files_that_exist_and_uses_debian():
    ins = instructions()
    assert all(arg.startswith("debian:bookworm") for op, arg in ins if op == "FROM")
    for op, arg in ins:
        if op == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} is missing"
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    for pkg in ("iproute2", "iptables", "etcd-client"):
        assert pkg in runs


def test_image_provides_every_command_the_manifest_runs():
    docs = [d for d in yaml.safe_load_all((REPO / "conf/shipped/kube-flannelette.yml").read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    commands = {c["command"][0] for c in spec["initContainers"] + spec["containers"]}
    ins = instructions()
    provided = set()
    for op, arg in ins:
        if op == "COPY" and arg.split()[-1].endswith("/"):
            provided |= {arg.split()[-1] + os.path.basename(s) for s in arg.split()[:-1]}
        provided |= set(re.findall(r"ln -s \S+ (\S+)", arg)) if op == "RUN" else set()
    assert commands <= provided, f"not in the image: {commands - provided}"
    (entry,) = [json.loads(arg) for op, arg in ins if op == "ENTRYPOINT"]
    assert entry == ["/usr/local/bin/flanneletted"]


@pytest.fixture
def fake_onedir(tmp_path) -> pathlib.Path:
    onedir = tmp_path / "image-onedir"
    (onedir / "_internal").mkdir(parents=True)
    exe = onedir / "flannelette"
    exe.write_text("#!/bin/sh\necho \"plugin $(basename \"$0\")\"\n")
    exe.chmod(0o755)
    return onedir


def install_cni(root: pathlib.Path, onedir: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(INSTALL_CNI), f"--root={root}", f"--onedir={onedir}",
                           f"--conflist={CONFLIST}"], capture_output=True, text=True, check=True)


def test_install_cni_lays_out_the_plugin_like_install_py(tmp_path, fake_onedir):
    root = tmp_path / "host"
    old_home = root / "opt" / "flannelette"  # a node installed earlier by packaging/install.py
    old_home.mkdir(parents=True)
    (old_home / "stale").write_text("x")
    install_cni(root, fake_onedir)
    install_cni(root, fake_onedir)  # an upgrade: the symlink flips, old copies go
    opt = root / "opt"
    versions = [p.name for p in opt.iterdir() if p.name.startswith("flannelette-")]
    assert len(versions) == 1 and os.readlink(opt / "flannelette") == versions[0]
    assert not (opt / "flannelette.old").exists()
    for exe in ("flannelette", "flannelette-ipam"):
        link = opt / "cni" / "bin" / exe
        assert os.readlink(link) == "../../flannelette/flannelette"  # as packaging/install.py
        out = subprocess.run([str(link)], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"plugin {exe}"
    installed = root / "etc" / "cni" / "net.d" / "10-flannelette.conflist"
    assert installed.read_bytes() == CONFLIST.read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o644


def test_install_cni_refuses_a_missing_onedir(tmp_path):
    proc = subprocess.run([str(INSTALL_CNI), f"--root={tmp_path}", f"--onedir={tmp_path}/none",
                           f"--conflist={CONFLIST}"], capture_output=True, text=True)
    assert proc.returncode == 1 and "no executable" in proc.stderr
    assert not (tmp_path / "opt").exists()
