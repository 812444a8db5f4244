"""flanneletted's files under a umask of 000, and a symlink planted where its socket directory goes.

The daemon must write subnet.env, its state dir and the VTEP MAC file without any
world-writable bit; a socket directory that is a symlink is neither followed nor
removed: the daemon runs on without the fast path, says so once, and counts it.
"""
from __future__ import annotations

import os
import stat

import pytest

from tests.support.cni import world_writable
from tests.support.flanneletted import VXLAN_CONFIG, underlay, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

ETCD_CONFIG = VXLAN_CONFIG


def test_umask_000_and_a_planted_socket_symlink(underlay):
    node = underlay.node()
    root = os.path.join(node.dir, "fresh")  # nothing exists below: the daemon makes it all
    os.makedirs(root, mode=0o755)
    target = os.path.join(node.dir, "planted-target")
    os.makedirs(target, mode=0o755)
    os.chmod(target, 0o755)
    os.symlink(target, os.path.join(root, "run-flannelette"))
    subnet_file = os.path.join(root, "run", "flannel", "subnet.env")
    state_dir = os.path.join(root, "var", "lib", "flanneletted")
    old = os.umask(0)  # inherited by the daemon
    try:
        node.start("--subnet-file", subnet_file, "--state-dir", state_dir,
                   "--cni-socket", os.path.join(root, "run-flannelette", "cni.sock"))
    finally:
        os.umask(old)
    node.subnet_file = subnet_file
    node.wait_ready()

    assert os.path.exists(os.path.join(state_dir, "flannel.1.mac"))
    assert world_writable(root) == []
    assert stat.S_IMODE(os.stat(subnet_file).st_mode) == 0o644

    # The planted link: not followed (no socket, no chmod at its target), not removed.
    assert os.listdir(target) == [] and stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert os.path.islink(os.path.join(root, "run-flannelette"))
    log = wait_for("the fast path refused", lambda: "serving no CNI fast path" in node.log() and node.log(),
                   node=node)
    assert "it is a symlink" in log, log
    assert node.metric("errors_total", where="cni_socket") == 1
    assert node.http("/readyz")[0] == 200 and node.proc.poll() is None
