"""The container image: the Dockerfile provides what the manifest runs from the onedir
that packaging/build.py makes, and install-cni puts the plugin on a host (that its tree
equals packaging/install.py's is tested in test_install.py)."""
from __future__ import annotations

import json
import os
import pathlib
import re

import yaml

from tests.support.install import packaging_build

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


def manifest_commands() -> set[str]:
    docs = [d for d in yaml.safe_load_all((REPO / "conf/shipped/kube-flannelette.yml").read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    return {c["command"][0] for c in spec["initContainers"] + spec["containers"]}


def test_image_provides_every_command_the_manifest_runs():
    commands = manifest_commands()
    ins = instructions()
    provided = set()
    for op, arg in ins:
        if op == "COPY" and arg.split()[-1].endswith("/"):
            provided |= {arg.split()[-1] + os.path.basename(s) for s in arg.split()[:-1]}
        provided |= set(re.findall(r"ln -s \S+ (\S+)", arg)) if op == "RUN" else set()
    assert commands <= provided, f"not in the image: {commands - provided}"
    (entry,) = [json.loads(arg) for op, arg in ins if op == "ENTRYPOINT"]
    assert entry == ["/usr/local/bin/flanneletted"]


def image_links() -> dict[str, str]:
    """link -> target for every `ln -s` of the final stage's RUN lines."""
    return dict((link, target) for op, arg in instructions() if op == "RUN"
                for target, link in re.findall(r"ln -s (\S+) (\S+)", arg))


def test_image_holds_the_onedir_where_install_cni_and_the_entrypoint_expect_it():
    ins = instructions()
    stages = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    build_stage, final_stage = ins[stages[0]:stages[1]], ins[stages[1]:]
    build_runs = " ".join(arg for op, arg in build_stage if op == "RUN")
    assert "packaging/build.py" in build_runs  # the build the tests install, not a second recipe
    (onedir_copy,) = [arg.split() for op, arg in final_stage if op == "COPY" and arg.startswith("--from")]
    home = onedir_copy[-1]
    default_onedir = re.search(r"^onedir=(\S+)$", INSTALL_CNI.read_text(), re.M).group(1)
    assert home == default_onedir == "/opt/flannelette"
    (entry,) = [json.loads(arg) for op, arg in final_stage if op == "ENTRYPOINT"]
    target = image_links()[entry[0]]
    assert os.path.dirname(target) == home
    assert os.path.basename(target) == packaging_build.DAEMON_EXECUTABLE
    # all frozen: nothing of the manifest runs the image's python3 (kept for the kind e2e's pods)
    assert not any(os.path.basename(c).startswith("python") for c in manifest_commands())
    assert "bash" not in INSTALL_CNI.read_text().splitlines()[0]  # POSIX sh, as in the image


def test_dockerfile_builds_with_what_dev_setup_installs_for_debian_python():
    """PyInstaller on Debian's python3 needs the same packages dev-setup.sh adds on a fresh machine."""
    build_runs = " ".join(arg for op, arg in instructions() if op == "RUN")
    dev_setup = (REPO / "packaging" / "dev-setup.sh").read_text()
    for pkg in ("python3-venv", "libpython3.11", "libpython3.11-dev", "binutils", "gcc"):
        assert pkg in build_runs and pkg in dev_setup, pkg
