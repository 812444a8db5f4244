"""The frozen flanneletted (PyInstaller onedir, installed by packaging/install.py) on a netns node.

grpc, protobuf and pyetcd are the parts most likely to break when frozen (data files,
extension modules, lazily imported backends): this runs the installed
<root>/usr/local/bin/flanneletted against a real etcd, next to a daemon run from source,
and sends a CNI request from the installed frozen shim to the frozen daemon's socket.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.flanneletted import (SUBNETS, DaemonNode, Underlay, underlay,  # noqa: F401
                                        wait_for)
from tests.support.install import packaging_install

pytestmark = pytest.mark.timeout(600)  # the first run may build the onedir (about a minute)

ETCD_CONFIG = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}'


class FrozenNode(DaemonNode):
    """A DaemonNode whose daemon is the installed frozen executable, not `python -m daemon.main`."""

    def __init__(self, u: Underlay, index: int, executable: str):
        super().__init__(u, index)
        self.executable = executable

    def argv(self, *extra: str) -> list[str]:
        source_argv = super().argv(*extra)
        assert source_argv[1:3] == ["-m", "daemon.main"]
        return [self.executable, *source_argv[3:]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("frozen-root")
    return packaging_install.install(str(root))  # a real copy, as on a node


def test_frozen_daemon_leases_writes_subnet_env_programs_peers_and_serves_the_shim(underlay, installed):
    daemon = installed["flanneletted"]
    assert os.path.islink(daemon) and os.path.realpath(daemon).endswith("/flanneletted")
    frozen = FrozenNode(underlay, 1, str(daemon))
    underlay.nodes.append(frozen)  # closed with the underlay
    frozen.start("--cni-socket", os.path.join(frozen.dir, "cni.sock"), "--ip-masq", "-v", "1")
    source = underlay.node().start()
    env = frozen.wait_ready()
    peer_env = source.wait_ready()
    assert os.readlink(f"/proc/{frozen.proc.pid}/exe") == os.path.realpath(daemon)  # no interpreter

    # subnet.env and the lease in etcd, as flanneld writes them
    assert [str(n) for n in env.networks] == ["10.244.0.0/16"] and env.ipmasq is True
    assert env.mtu == 1450  # 1500 minus the VXLAN overhead
    leases = {k[len(SUBNETS):]: json.loads(v) for k, v in underlay.etcd.get_prefix(SUBNETS).items()}
    lease = leases[f"{env.subnet.network.network_address}-24"]
    assert lease["PublicIP"] == frozen.ip and lease["BackendType"] == "vxlan"

    # the data plane: flannel.1 and a route to the peer's subnet through it
    (vxlan,) = frozen.ip_json("-d", "link", "show", "flannel.1")
    assert vxlan["linkinfo"]["info_data"]["id"] == 1
    peer_subnet = str(peer_env.subnet.network)
    wait_for("the route to the source-run peer", lambda: any(
        r["dst"] == peer_subnet and r.get("dev") == "flannel.1" for r in frozen.ip_json("route", "show")),
        node=frozen)
    assert frozen.ns.run("iptables", "-t", "nat", "-S", check=False).stdout.count(b"10.244.0.0/16") >= 1

    # the installed frozen shim -> the frozen daemon's fast path (STATUS needs no pod netns)
    conf = json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "flannelette",
                       "daemonSocket": os.path.join(frozen.dir, "cni.sock"),
                       "subnetFile": frozen.subnet_file}).encode()
    out = subprocess.run([str(installed["flannelette"])], input=conf, capture_output=True, timeout=60,
                         env={"CNI_COMMAND": "STATUS", "PATH": "/usr/bin:/bin"})
    assert (out.returncode, out.stdout) == (0, b""), out.stderr
    wait_for("the daemon's log of the STATUS it served", lambda: "served STATUS" in frozen.log(), node=frozen)
    assert "Traceback" not in frozen.log()
    assert frozen.stop() == 0  # SIGTERM: one clean shutdown path, frozen too
