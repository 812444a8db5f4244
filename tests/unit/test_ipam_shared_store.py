"""One IPAM store per subnet: two network names on one subnet, GC per network, upgrade.

The handlers run in process (conf.dispatch.run); the same store through the installed
`flannelette-ipam` executable is in tests/packaging/test_ipam_executable.py. No root needed.
"""
import ipaddress
import json
import os

import pytest

from conf.dispatch import run
from ipam.disk_store import DiskStore
from ipam.plugin import HANDLERS
from ipam.shared_store import SUBNETS_DIR
from tests.support.cni import invoke

SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
KEY = "10.244.1.0_24"


class Node:
    """A node's subnet.env and IPAM data dir; calls go through `exe` when one is given."""

    def __init__(self, root, exe=None):
        self.root, self.exe = root, exe
        (root / "subnet.env").write_text(SUBNET_ENV)
        self.data_dir = root / "data"

    def config(self, name, **extra):
        return {"cniVersion": "1.1.0", "name": name, "type": "bridge", **extra,
                "ipam": {"type": "flannelette-ipam", "subnetFile": str(self.root / "subnet.env"),
                         "dataDir": str(self.data_dir)}}

    def call(self, command, name, cid="", ifname="eth0", **extra):
        config = self.config(name, **extra)
        if self.exe:
            out = invoke(self.exe, command, config, container_id=cid,
                         netns="/run/netns/x" if cid else "", ifname=ifname if cid else "")
            assert out.status == 0, out
            return out.result
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": ifname}
        status, stdout = run(HANDLERS, {k: v for k, v in env.items() if v}, json.dumps(config).encode())
        assert status == 0, stdout
        return json.loads(stdout) if stdout else None

    def add(self, name, cid, ifname="eth0"):
        return self.call("ADD", name, cid, ifname)["ips"][0]["address"].split("/")[0]

    def gc(self, name, valid):
        self.call("GC", name, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]})

    def held(self):
        """ip -> (container id, ifname) of the one subnet store."""
        store = DiskStore(str(self.data_dir / SUBNETS_DIR), KEY)
        with store.locked():
            return {str(r.ip): (r.container_id, r.ifname) for r in store.list_all()}

    def legacy(self, name, ip, cid, ifname="eth0"):
        store = DiskStore(str(self.data_dir), name)
        with store.locked():
            assert store.reserve(cid, ifname, ipaddress.ip_address(ip), 0)


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def check_two_networks_share_no_address(node):
    ips = [node.add(name, f"c{i}") for i, name in enumerate(["cbr0", "flannel"] * 5)]
    assert len(set(ips)) == 10
    assert len(node.held()) == 10
    for name in ("cbr0", "flannel"):  # the by-name path leads to the one store
        assert os.readlink(node.data_dir / name) == os.path.join(SUBNETS_DIR, KEY)
        assert sorted(n for n in os.listdir(node.data_dir / name) if n[0].isdigit()) == sorted(node.held())
    with open(node.data_dir / "cbr0" / ips[0], "rb") as f:  # host-local's file format
        assert f.read() == b"c0\r\neth0"


def test_two_networks_on_one_subnet_never_share_an_address(node):
    check_two_networks_share_no_address(node)


def test_gc_of_one_network_never_frees_the_others(node):
    a = [node.add("cbr0", f"a{i}") for i in range(3)]
    b = [node.add("flannel", f"b{i}") for i in range(3)]
    node.gc("cbr0", [("a0", "eth0")])
    assert sorted(node.held()) == sorted([a[0], *b])
    node.gc("flannel", [])
    assert sorted(node.held()) == [a[0]]
    assert os.listdir(node.data_dir / "cbr0" / "owners" / "flannel") == []


def test_del_works_by_attachment_whatever_the_name(node):
    ip = node.add("cbr0", "c1")
    node.call("DEL", "renamed", "c1")  # the conflist was renamed since ADD
    assert node.held() == {} and not os.path.exists(node.data_dir / "cbr0" / ip)


def test_legacy_stores_are_adopted_on_upgrade(node):
    node.legacy("cbr0", "10.244.1.5", "old-a")
    node.legacy("cbr0", "10.244.1.9", "dup-a")
    node.legacy("other", "10.244.1.6", "old-b", "net1")
    node.legacy("other", "10.244.1.9", "dup-b", "net1")  # the double allocation of the old layout
    node.legacy("elsewhere", "10.88.0.2", "podman-c")  # another subnet: left alone
    new = [node.add("flannel", f"n{i}") for i in range(4)]
    assert not {"10.244.1.5", "10.244.1.6", "10.244.1.9"} & set(new)
    held = node.held()
    assert held["10.244.1.5"] == ("old-a", "eth0") and held["10.244.1.6"] == ("old-b", "net1")
    assert held["10.244.1.9"] in {("dup-a", "eth0"), ("dup-b", "net1")}
    for name in ("cbr0", "other"):
        assert os.path.islink(node.data_dir / name)
    assert not os.path.islink(node.data_dir / "elsewhere")
    assert os.listdir(node.data_dir / "elsewhere").count("10.88.0.2") == 1
    # GC of "other" sees only what "other" reserved before the upgrade
    node.gc("other", [])
    assert "10.244.1.6" not in node.held() and "10.244.1.5" in node.held()
    node.call("DEL", "cbr0", "old-a")  # DEL through the old name still releases
    assert "10.244.1.5" not in node.held()


def test_legacy_store_read_by_del_and_gc_before_any_add(node):
    node.legacy("cbr0", "10.244.1.5", "old-a")
    node.legacy("cbr0", "10.244.1.7", "old-b")
    node.gc("cbr0", [("old-b", "eth0")])  # no ADD since the upgrade: the legacy dir as it is
    node.call("DEL", "cbr0", "old-b")
    store = DiskStore(str(node.data_dir), "cbr0")
    with store.locked():
        assert store.list_all() == []


def test_del_finds_the_address_after_the_subnet_moved(node):
    node.add("cbr0", "c1")
    (node.root / "subnet.env").write_text(SUBNET_ENV.replace("10.244.1.1/24", "10.244.7.1/24"))
    node.add("cbr0", "c2")
    assert os.readlink(node.data_dir / "cbr0") == os.path.join(SUBNETS_DIR, "10.244.7.0_24")
    node.call("DEL", "cbr0", "c1")
    assert node.held() == {}


def test_a_reboot_frees_every_networks_reservations_at_the_first_operation(node, tmp_path, monkeypatch):
    from ipam import boot
    boot_file = tmp_path / "boot_id"
    boot_file.write_text("boot-one\n")
    monkeypatch.setenv(boot.BOOT_ID_ENV, str(boot_file))
    node.add("cbr0", "a1")
    node.add("flannel", "b1")
    assert len(node.held()) == 2
    boot_file.write_text("boot-two\n")  # the node rebooted
    node.add("cbr0", "a2")  # the first operation of the new boot, by one network
    assert [cid for cid, _ in node.held().values()] == ["a2"]
