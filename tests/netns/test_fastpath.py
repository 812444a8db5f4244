"""The fast path end to end: installed shim -> daemon socket -> handlers in the node netns."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from cni_plugin import shim
from conf.errors import InvalidConfigError
from daemon.fastpath.server import CniServer
from tests.support.cni import BASE_PATH, invoke
from tests.support.install import FastPathServer, installed_bin_dir
from tests.support.netns import NetNS

pytestmark = pytest.mark.timeout(180)
NETWORK = "flt-fp"
NOBODY = 65534


class Node:
    """A node netns with subnet.env, the installed plugins and a warm cni_server in it."""

    def __init__(self, root: str):
        self.root = root
        self.ns = NetNS()
        self.pods: list[NetNS] = []
        self.bin_dir = installed_bin_dir(root)
        self.socket = os.path.join(root, "run", "flannelette", "cni.sock")
        self.subnet_file = os.path.join(root, "run", "subnet.env")
        os.makedirs(os.path.dirname(self.subnet_file), exist_ok=True)
        with open(self.subnet_file, "w") as f:
            f.write("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        self.server = FastPathServer(self.socket, self.ns.name)

    def conf(self, fast: bool = True, **extra) -> dict:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "flannelette",
                "subnetFile": self.subnet_file, "dataDir": os.path.join(self.root, "state"),
                "daemonSocket": self.socket if fast else "",
                "ipam": {"type": "flannelette-ipam", "dataDir": os.path.join(self.root, "ipam")},
                **extra}

    def pod(self) -> NetNS:
        self.pods.append(NetNS())
        return self.pods[-1]

    def run(self, command: str, config, cid: str, netns: str = "", ifname: str = "eth0"):
        return invoke(os.path.join(self.bin_dir, "flannelette"), command, config, container_id=cid,
                      netns=netns, ifname=ifname, cni_path=self.bin_dir,
                      prefix=("ip", "netns", "exec", self.ns.name))

    def links(self) -> set[str]:
        return {link["ifname"] for link in json.loads(self.ns.out("ip", "-j", "link", "show"))}

    def close(self) -> None:
        self.server.stop()
        for pod in self.pods:
            pod.close()
        self.ns.close()


@pytest.fixture
def node():
    root = tempfile.mkdtemp(prefix="flt-fastpath-")
    n = Node(root)
    try:
        yield n
    finally:
        n.close()
        shutil.rmtree(root, ignore_errors=True)


def _normalised(result: dict) -> str:
    """A result with what differs between two pods (MACs, addresses, names) masked."""
    text = json.dumps(result, sort_keys=True)
    text = re.sub(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "MAC", text)
    text = re.sub(r"10\.244\.1\.\d+/24", "ADDR", text)
    text = re.sub(r"veth[0-9a-f]+", "VETH", text)
    return re.sub(r"/run/netns/flt-[0-9a-f]+", "NETNS", text)


def test_fast_path_and_in_process_give_identical_results(node):
    results = {}
    for fast in (True, False):
        pod = node.pod()
        out = node.run("ADD", node.conf(fast), cid=f"same-{int(fast)}", netns=pod.path)
        assert out.status == 0, out
        results[fast] = out.result
        check = node.run("CHECK", {**node.conf(fast), "prevResult": out.result}, cid=f"same-{int(fast)}",
                         netns=pod.path)
        assert check.status == 0, check
    assert _normalised(results[True]) == _normalised(results[False])
    for fast in (True, False):
        out = node.run("DEL", node.conf(fast), cid=f"same-{int(fast)}", netns=node.pods[not fast].path)
        assert (out.status, out.result) == (0, None), out
    assert not any(name.startswith("veth") for name in node.links())
    served = node.server.log()
    assert "served ADD for container 'same-1'" in served and "'same-0'" not in served


BAD_INPUTS = {
    "bad field": ({"bridge": "no/slash"}, "ADD", "pod"),
    "bad mtu type": ({"mtu": "big"}, "ADD", "pod"),
    "missing ifname": ({}, "ADD-noif", "pod"),
    "netns is a file": ({}, "ADD", "file"),
    "netns vanished on DEL": ({}, "DEL", "gone"),
    "netns missing on ADD": ({}, "ADD", "gone"),
    "CHECK without prevResult": ({}, "CHECK", "pod"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_errors_are_identical_both_ways(node, case):
    extra, command, where = BAD_INPUTS[case]
    pod = node.pod()
    not_a_netns = os.path.join(node.root, "not-a-netns")
    open(not_a_netns, "w").close()
    netns = {"pod": pod.path, "file": not_a_netns, "gone": "/run/netns/flt-gone-0000"}[where]
    ifname = "" if command.endswith("-noif") else "eth0"
    before = node.links()
    outs = [node.run(command.split("-")[0], node.conf(fast, **extra), cid="bad", netns=netns, ifname=ifname)
            for fast in (True, False)]
    assert outs[0][:2] == outs[1][:2], f"fast path {outs[0]} != in-process {outs[1]}"
    assert node.links() == before


def test_peercred_refuses_a_non_root_client(tmp_path):
    calls = []
    path = str(tmp_path / "sock" / "cni.sock")

    def add(req):
        calls.append(req.env.container_id)
        raise InvalidConfigError("should not run")
    with CniServer(path, {"ADD": add}):
        # Open the file modes so the kernel lets nobody connect: SO_PEERCRED is the last line.
        os.chmod(os.path.dirname(path), 0o755)
        os.chmod(path, 0o666)
        replies = {}
        for uid in (NOBODY, 0):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: drop to `uid`, then talk to the daemon
                code = 1
                try:
                    os.close(read_end)
                    if uid:
                        os.setgid(NOBODY)
                        os.setuid(NOBODY)
                    env = b"CNI_COMMAND=ADD\0CNI_CONTAINERID=x%d\0CNI_NETNS=/x\0CNI_IFNAME=eth0\0" % uid
                    request = shim.encode_request(shim.OP_CNI, env,
                                                  b'{"cniVersion":"1.0.0","name":"n","type":"t"}')
                    reply = shim.exchange(path, request)
                    os.write(write_end, b"refused" if reply is None else bytes([reply[0]]))
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            _, status = os.waitpid(pid, 0)
            assert status == 0
            with os.fdopen(read_end, "rb") as f:
                replies[uid] = f.read()
    assert replies[NOBODY] == b"refused"
    assert replies[0] == b"\x01"  # root got through to the handler, which failed on purpose
    assert calls == ["x0"]


SLOW_IPAM = """#!/bin/sh
# flannelette-ipam, announced in a marker file and held back so the test can kill the client mid-ADD
[ "$CNI_COMMAND" = ADD ] && touch {marker} && sleep 1
exec {bin_dir}/flannelette-ipam
"""


def test_client_killed_mid_add_then_retry_gets_the_same_address(node):
    marker = os.path.join(node.root, "ipam-started")
    slow = os.path.join(node.bin_dir, "slow-ipam")
    with open(slow, "w") as f:
        f.write(SLOW_IPAM.format(marker=marker, bin_dir=node.bin_dir))
    os.chmod(slow, 0o755)
    ipam_dir = os.path.join(node.root, "slow-ipam")
    conf = node.conf(ipam={"type": "slow-ipam", "dataDir": ipam_dir, "subnetFile": node.subnet_file})
    pod = node.pod()
    env = {"PATH": BASE_PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "killed", "CNI_NETNS": pod.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": node.bin_dir}
    client = subprocess.Popen(["ip", "netns", "exec", node.ns.name, os.path.join(node.bin_dir, "flannelette")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    client.stdin.write(json.dumps(conf).encode())
    client.stdin.close()
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):  # the daemon is inside the ADD now
        assert client.poll() is None and time.monotonic() < deadline, "ADD never reached IPAM"
        time.sleep(0.01)
    os.kill(client.pid, signal.SIGKILL)  # `ip netns exec` execs the plugin: this is the shim
    client.wait()
    client.stdout.close()
    retry = node.run("ADD", conf, cid="killed", netns=pod.path)
    assert retry.status == 0, retry
    addresses = [ip["address"] for ip in retry.result["ips"]]
    held = sorted(n for n in os.listdir(os.path.join(ipam_dir, NETWORK)) if n[0].isdigit())
    assert [a.split("/")[0] for a in addresses] == held  # one address: the first ADD's, reused
    pod_addrs = json.loads(pod.out("ip", "-j", "-4", "addr", "show", "dev", "eth0"))[0]["addr_info"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in pod_addrs] == addresses
    out = node.run("DEL", conf, cid="killed", netns=pod.path)
    assert out.status == 0, out
    assert not any(name.startswith("veth") for name in node.links())


def test_status_reaches_the_daemon(node):
    out = subprocess.run(["ip", "netns", "exec", node.ns.name, os.path.join(node.bin_dir, "flannelette"),
                          "status", "--socket", node.socket], capture_output=True, timeout=60)
    # The standalone server has no leases to report and says so; the CLI explains it.
    assert out.returncode == 1
    assert b"no lease status" in out.stderr and not out.stdout


def test_socket_is_private(node):
    assert os.stat(os.path.dirname(node.socket)).st_mode & 0o777 == 0o700
    assert os.stat(node.socket).st_mode & 0o777 == 0o600
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(node.socket)
    probe.close()
