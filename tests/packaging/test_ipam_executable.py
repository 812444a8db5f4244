"""The real `flannelette-ipam` executable, run as a runtime runs it: bad input, concurrency,
two networks on one subnet.

No root needed: the IPAM plugin touches files only.
"""
import ipaddress
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from conf.dispatch import run
from ipam.disk_store import DiskStore
from ipam.plugin import HANDLERS
from tests.support.cni import invoke, our_executable, tree_snapshot
from tests.unit import test_ipam_shared_store as shared_store

SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


@pytest.fixture(scope="module")
def exe():
    return our_executable("flannelette-ipam")


class Node:
    def __init__(self, root):
        self.root = root
        (root / "subnet.env").write_text(SUBNET_ENV)
        (root / "garbled.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=what\n")
        self.data_dir = root / "data"

    def config(self, version="1.1.0", **ipam):
        return {"cniVersion": version, "name": "cbr0", "type": "bridge",
                "ipam": {"type": "flannelette-ipam", "subnetFile": str(self.root / "subnet.env"),
                         "dataDir": str(self.data_dir), **ipam}}

    def store(self):
        return DiskStore(str(self.data_dir), "cbr0")

    def seed(self, cid):
        store = self.store()
        with store.locked():
            assert store.reserve(cid, "eth0", ipaddress.ip_address("10.244.1.2"), 0)

    def held(self):
        store = self.store()
        with store.locked():
            return store.list_all()


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def add(exe, node, cid, ifname="eth0", **kw):
    return invoke(exe, "ADD", node.config(), container_id=cid, netns="/run/netns/x", ifname=ifname, **kw)


# ---------------------------------------------------------------- bad input

GOOD = dict(container_id="c-new", netns="/run/netns/x", ifname="eth0")


def _cfg(node, version="1.1.0", **ipam):
    return node.config(version, **ipam)


BAD_INPUT = [
    # (id, command, stdin builder, invoke overrides, code, words the message must hold)
    ("invalid JSON", "ADD", lambda n: b'{"cniVersion": "1.0.0", "name": ', {}, 6, ["not valid JSON"]),
    ("not an object", "ADD", lambda n: b"[]", {}, 6, ["JSON object"]),
    ("oversized stdin", "ADD", lambda n: b" " * (1 << 20) + json.dumps(_cfg(n)).encode(), {}, 6, ["limit"]),
    ("unknown cniVersion", "ADD", lambda n: _cfg(n, "9.9.9"), {}, 1, ["9.9.9"]),
    ("missing CNI_CONTAINERID", "ADD", _cfg, {"drop": ["CNI_CONTAINERID"]}, 4, ["CNI_CONTAINERID"]),
    ("container id ../../etc", "ADD", _cfg, {"container_id": "../../etc"}, 4, ["CNI_CONTAINERID"]),
    ("container id ../../etc on DEL", "DEL", _cfg, {"container_id": "../../etc"}, 4, ["CNI_CONTAINERID"]),
    ("ifname of 16 characters", "ADD", _cfg, {"ifname": "e" * 16}, 4, ["CNI_IFNAME"]),
    ("unknown CNI_COMMAND", "FROB", _cfg, {}, 4, ["FROB"]),
    ("CHECK with 0.3.1", "CHECK", lambda n: _cfg(n, "0.3.1"), {}, 1, ["CHECK", "0.4.0"]),
    ("GC with 1.0.0", "GC", lambda n: _cfg(n, "1.0.0"), {}, 1, ["GC", "1.1.0"]),
    ("subnet.env missing", "ADD", lambda n: _cfg(n, subnetFile=str(n.root / "absent.env")), {}, 11,
     ["absent.env", "flanneletted"]),
    ("subnet.env garbled", "ADD", lambda n: _cfg(n, subnetFile=str(n.root / "garbled.env")), {}, 7,
     ["garbled.env", "FLANNEL_SUBNET"]),
    ("range outside its subnet", "ADD", lambda n: _cfg(n, ranges=[[{"subnet": "10.9.0.0/24", "rangeStart": "10.8.0.1"}]]),
     {}, 7, ["'ipam.ranges.0.0'", "rangeStart"]),
    ("range with host bits", "ADD", lambda n: _cfg(n, ranges=[[{"subnet": "10.9.0.7/24"}]]), {}, 7,
     ["'ipam.ranges.0.0.subnet'"]),
    ("range ends on broadcast", "ADD", lambda n: _cfg(n, ranges=[[{"subnet": "10.9.0.0/24", "rangeEnd": "10.9.0.255"}]]),
     {}, 7, ["'ipam.ranges.0.0.rangeEnd'"]),
    ("overlapping range sets", "ADD", lambda n: _cfg(n, ranges=[[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/25"}]]),
     {}, 7, ["'ipam.ranges.1.0'", "overlaps"]),
    ("ranges not a list", "ADD", lambda n: _cfg(n, ranges="10.9.0.0/24"), {}, 7, ["'ipam.ranges'"]),
    ("bad network name", "ADD", lambda n: {**_cfg(n), "name": "../cbr0"}, {}, 7, ["'name'"]),
    ("GC without attachments", "GC", _cfg, {}, 7, ["cni.dev/valid-attachments"]),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gives_the_code_and_changes_nothing(exe, node, case):
    _, command, build, overrides, code, words = case
    node.seed("existing")  # a store with something in it
    before = tree_snapshot(str(node.root))
    stdin = build(node)
    status, out, stderr = invoke(exe, command, stdin, **{**GOOD, **overrides})
    assert status != 0
    assert out is not None and out["code"] == code, out
    for word in words:
        assert word in out["msg"], out["msg"]
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert tree_snapshot(str(node.root)) == before


def test_bad_input_on_a_fresh_node_creates_no_store(exe, node):
    before = tree_snapshot(str(node.root))
    for stdin in (node.config(subnetFile=str(node.root / "absent.env")), b"{"):
        assert invoke(exe, "ADD", stdin, **GOOD).status != 0
    assert tree_snapshot(str(node.root)) == before and not node.data_dir.exists()


def test_version_through_the_executable(exe):
    status, out, stderr = invoke(exe, "VERSION", b'{"cniVersion": "0.4.0"}')
    assert (status, stderr) == (0, "")
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


# ---------------------------------------------------------------- concurrency


def del_in_process(node, cid):
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0"}
    return run(HANDLERS, env, json.dumps(node.config()).encode())


@pytest.mark.timeout(600)
def test_8_processes_x_30_adds_then_exhaustion_then_dels(exe, node):
    def worker(n):
        return [add(exe, node, f"w{n}-{i}") for i in range(30)]

    with ThreadPoolExecutor(8) as pool:  # eight executables running at any moment
        outcomes = [o for batch in pool.map(worker, range(8)) for o in batch]
        assert [o.status for o in outcomes] == [0] * 240, [o for o in outcomes if o.status][:3]
        addresses = [o.result["ips"][0]["address"] for o in outcomes]
        assert len(set(addresses)) == 240
        assert len(node.held()) == 240

        # fill the /24: 253 allocatable (.0 network, .1 gateway, .255 broadcast never)
        rest = list(pool.map(lambda i: add(exe, node, f"fill-{i}"), range(13)))
        assert [o.status for o in rest] == [0] * 13
        held = {str(r.ip) for r in node.held()}
        assert len(held) == 253 and not held & {"10.244.1.0", "10.244.1.1", "10.244.1.255"}

        full = add(exe, node, "one-too-many")
        assert full.status != 0 and full.result["code"] == 100
        assert full.result["msg"] == "no IP addresses available in range set: 10.244.1.1-10.244.1.254"

        # The DELs run the executable's own dispatch in-process on 8 threads: the same
        # code minus 253 interpreter start-ups (DEL through the executable is covered
        # by the bad-input table and the bridge netns test).
        cids = [f"w{n}-{i}" for n in range(8) for i in range(30)] + [f"fill-{i}" for i in range(13)]
        dels = list(pool.map(lambda cid: del_in_process(node, cid), cids))
    assert dels == [(0, b"")] * 253
    assert node.held() == []
    assert sorted(os.listdir(node.data_dir / "cbr0")) == ["boot_id", "last_reserved_ip.0", "lock", "owners"]
    assert os.listdir(node.data_dir / "cbr0" / "owners" / "cbr0") == []


# ---------------------------------------------------------------- one store per subnet


def test_two_networks_on_one_subnet_never_share_an_address(exe, tmp_path):
    shared_store.check_two_networks_share_no_address(shared_store.Node(tmp_path, exe))
