"""The node doctor's checks (daemon/doctor/node.py) on hand-built facts, and its store reader."""
from __future__ import annotations

import ipaddress
import json

from conf.flannel import parse_subnet_env
from daemon.doctor.facts import LeaseFacts
from daemon.doctor.node import NodeFacts, Reservation, diagnose_node, read_reservations
from tests.unit.test_doctor_hops import VTEP_MAC, healthy

NET = ipaddress.ip_network
ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={}\n"
MASQ = ("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        "COMMIT\n*filter\n-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n")


def sound(ipmasq: bool = False, **changes) -> NodeFacts:
    n = NodeFacts(parse_subnet_env(ENV.format("true" if ipmasq else "false")), daemon_ready=True,
                  own=LeaseFacts(NET("10.244.1.0/24"), "192.168.50.11", "vxlan", "0a:00:00:00:00:01", 86000),
                  peers=[LeaseFacts(NET("10.244.2.0/24"), "192.168.50.12", "vxlan", VTEP_MAC, 86000)],
                  network=NET("10.244.0.0/16"), kernel=healthy(iptables={"nft": MASQ if ipmasq else ""}),
                  reservations=[Reservation("10.244.1.2", "c1", "eth0", True)], ipam_dir="/x/cbr0")
    for key, value in changes.items():
        setattr(n, key, value)
    return n


def names(n: NodeFacts, failed: bool = False) -> list[str]:
    return [h.name for h in diagnose_node(n).hops if not failed or not h.ok]


def test_a_sound_node_and_the_rules_check_only_with_ipmasq():
    assert diagnose_node(sound()).ok and names(sound()) == ["daemon", "lease", "subnet-env", "peers", "ipam"]
    assert diagnose_node(sound(True)).ok and "rules" in names(sound(True))
    assert names(sound(True, kernel=healthy(iptables={"nft": "", "legacy": ""})), failed=True) == ["rules"]


def test_each_node_break_is_named():
    gone = [Reservation("10.244.1.9", "c9", "eth0", False)]
    other = LeaseFacts(NET("10.244.3.0/24"), "192.168.50.13", "vxlan", "0a:00:00:00:00:03", 86000)
    cases = {
        "daemon": dict(daemon_ready=None, daemon_error="no flannelette daemon answers"),
        "lease": dict(own=None),
        "subnet-env": dict(own=LeaseFacts(NET("10.244.7.0/24"), "192.168.50.11", "vxlan", "", 10)),
        "peers": dict(peers=[sound().peers[0], other]),
        "ipam": dict(reservations=gone),
    }
    for hop, change in cases.items():
        failed = names(sound(**change), failed=True)
        assert failed[0] == hop, (hop, failed)
    found = next(h.found for h in diagnose_node(sound(peers=[sound().peers[0], other])).hops if h.name == "peers")
    assert found.startswith("1 of 2 peers programmed: 10.244.3.0/24 (192.168.50.13): node-route")


def test_a_nearly_full_range_fails_ipam():
    many = [Reservation(f"10.244.1.{i}", f"c{i}", "eth0", True) for i in range(2, 232)]
    hop = diagnose_node(sound(reservations=many)).hops[-1]
    assert hop.name == "ipam" and not hop.ok and "230 of 253 addresses reserved (91%)" in hop.found


def test_read_reservations_matches_the_plugin_attachments(tmp_path):
    ipam, plugin = tmp_path / "networks" / "cbr0", tmp_path / "flannelette" / "cbr0"
    ipam.mkdir(parents=True)
    plugin.mkdir(parents=True)
    for ip, cid in (("10.244.1.2", "alive"), ("10.244.1.3", "gone"), ("10.244.1.4", "nsgone")):
        (ipam / ip).write_text(f"{cid}\r\neth0")
    (ipam / "last_reserved_ip.0").write_text("10.244.1.4")
    (ipam / "lock").write_text("")
    (plugin / "alive:eth0.json").write_text(json.dumps({"netns": str(tmp_path)}))
    (plugin / "nsgone:eth0.json").write_text(json.dumps({"netns": str(tmp_path / "no-such-ns")}))
    got = {r.ip: r.pod_present for r in read_reservations(str(ipam), str(plugin))}
    assert got == {"10.244.1.2": True, "10.244.1.3": False, "10.244.1.4": False}


def test_the_lean_shim_hands_doctor_to_the_daemon_stack(tmp_path):
    """`flannelette doctor` (script form) runs daemon.doctor; a half question exits 2, and a
    node without subnet.env is a failed node check, not a traceback."""
    import subprocess
    import sys

    from tests.unit.test_shim import STUB
    half = subprocess.run([sys.executable, "-I", "-S", "-c", STUB, "doctor", "--to", "10.244.0.1", "--json"],
                          capture_output=True, timeout=60)
    assert half.returncode == 2, half.stderr
    assert "--from and --to go together" in json.loads(half.stdout)["error"]
    node = subprocess.run([sys.executable, "-I", "-S", "-c", STUB, "doctor", "--json",
                           "--conflist", str(tmp_path / "none"), "--subnet-file", str(tmp_path / "subnet.env"),
                           "--cni-socket", str(tmp_path / "no.sock"), "--etcd-endpoints", "http://127.0.0.1:1",
                           "--etcd-dial-timeout", "1"],
                          capture_output=True, timeout=60)
    report = json.loads(node.stdout)
    assert node.returncode == 1 and b"Traceback" not in node.stderr, node.stderr
    assert [h["name"] for h in report["hops"] if not h["ok"]] == ["daemon", "lease", "subnet-env", "peers"]
