"""`flannelette doctor --from POD --to ADDRESS` on a real cluster, broken one way at a time
(and `flannelette doctor`, the node's own check, at the end).

One vxlan cluster (two nodes, real etcd and daemons, pods wired by the installed plugin)
for the whole module: each test breaks the path from pod `a` (node1) to pod `b` (node2)
in one way, checks that the installed `flannelette doctor` (run in node1's namespace as an
operator would) names exactly that hop with exit status 1, repairs it and checks the path
is reported sound again. The doctor must change nothing: one test compares the kernel
state of both nodes and pods, the iptables rules and etcd (keys and revision) before and
after a run.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import time
from typing import Iterator

import pytest

from tests.e2e.cluster import Cluster, ClusterSpec
from tests.e2e.conftest import started_cluster
from tests.e2e.node import Node, Pod

pytestmark = pytest.mark.timeout(120)

HOPS_VXLAN = ["pod-interface", "pod-address", "pod-routes", "veth", "bridge", "node-route",
              "vxlan-neighbour", "vxlan-fdb", "peer-lease", "underlay", "mtu", "forward-rules",
              "rp-filter", "checksum-offload"]


class World:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.node1, self.node2 = cluster.nodes
        self.a: Pod = cluster.add_pod(self.node1)
        self.b: Pod = cluster.add_pod(self.node2)
        self.a2: Pod = cluster.add_pod(self.node1)
        self.runs = 0

    def doctor(self, to: str | None = None, source: str | None = None,
               node: Node | None = None) -> tuple[int, dict]:
        """(exit status, JSON report) of the installed `flannelette doctor` run in `node`;
        to="" runs the node doctor (no --from/--to)."""
        node = node or self.node1
        path = () if to == "" else ("--from", source or self.a.ns.path, "--to", to or self.b.ip)
        argv = node.doctor_argv(*path, "--json")
        proc = subprocess.run(argv, capture_output=True, timeout=60)
        self.runs += 1
        assert not proc.stderr.strip() or b"Traceback" not in proc.stderr, proc.stderr.decode()
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"doctor exited {proc.returncode}, no JSON: {proc.stdout!r} "
                                 f"{proc.stderr.decode()[-2000:]}") from None

    def assert_broken(self, hop: str) -> dict:
        code, report = self.doctor()
        assert report["first_failure"] == hop, json.dumps(report, indent=1)
        assert code == 1 and report["ok"] is False
        failed = next(h for h in report["hops"] if h["name"] == hop)
        assert failed["expected"] and failed["found"] and failed["fix"], failed
        return report

    def assert_sound(self, timeout: float = 15.0) -> dict:
        """Sound within `timeout` (a restarted daemon needs a moment to reprogram)."""
        deadline = time.monotonic() + timeout
        while True:
            code, report = self.doctor()
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 0 and report["ok"] and report["first_failure"] is None, json.dumps(report, indent=1)
        return report

    def restart(self, *nodes: Node) -> None:
        for node in nodes:
            if node.proc is not None:
                node.stop_daemon()
            since = time.time()
            node.start_daemon()
            node.wait_ready(since=since)
        self.cluster.wait_converged()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    spec = ClusterSpec(backend="vxlan", nodes=2, daemon_args=("--health-probe-interval", "0.5"))
    with started_cluster(spec) as cluster:
        w = World(cluster)
        yield w
        print(f"\ndoctor runs: {w.runs}")


def _veth(w: World) -> str:
    """The host end of pod a's eth0."""
    index = json.loads(w.a.ns.out("ip", "-j", "link", "show", "eth0"))[0]["link_index"]
    return next(link["ifname"] for link in json.loads(w.node1.ns.out("ip", "-j", "link", "show"))
                if link["ifindex"] == index)


def _settled(text: str) -> str:
    """Without what changes by itself: bridge timers, IPv6 duplicate address detection."""
    return re.sub(r" \w+_timer +[\d.]+| tentative", "", text)


def _snapshot(w: World) -> dict:
    """Everything the doctor reads, as text."""
    c = w.cluster
    assert c.etcd is not None
    out = {n.name: n.data_plane() for n in c.nodes}
    for node in c.nodes:
        out[node.name]["links"] = _settled(node.ns.out("ip", "-d", "-o", "link", "show"))
        out[node.name]["addrs"] = _settled(node.ns.out("ip", "-o", "addr", "show"))
        out[node.name]["iptables"] = "".join(
            node.ns.out(t) for t in ("iptables-legacy-save", "iptables-nft-save")).replace(
            "#", "\n#")
        out[node.name]["iptables"] = "\n".join(line for line in out[node.name]["iptables"].splitlines()
                                               if not line.startswith("#"))
        out[node.name]["sysctl"] = node.ns.out("sysctl", "-a", "--pattern", "net.ipv4.conf")
    for pod in c.pods:
        out[pod.label] = {"kernel": _settled(pod.ns.out("ip", "-d", "-o", "link", "show")
                                             + pod.ns.out("ip", "-o", "addr") + pod.ns.out("ip", "route"))}
    rev = json.loads(c.etcd.ctl("get", c.spec.prefix, "--prefix", "-w", "json").stdout)
    out["etcd"] = {"revision": rev["header"]["revision"], "leases": c.leases()}
    return out


# ---------------------------------------------------------------- sound paths and wrong questions


def test_a_healthy_path_is_reported_sound_with_every_hop_in_order(world):
    report = world.assert_sound()
    assert [h["name"] for h in report["hops"]] == HOPS_VXLAN
    assert report["to"] == world.b.ip
    assert world.a.ping(world.b.ip, wait=2)
    code, local = world.doctor(to=world.a2.ip)  # same node: no tunnel hops
    assert code == 0, json.dumps(local, indent=1)
    assert "vxlan-fdb" not in [h["name"] for h in local["hops"]] and "node-route" in [
        h["name"] for h in local["hops"]]


def test_the_pod_can_be_named_by_its_address_or_netns_name(world):
    code, report = world.doctor(source=world.a.ip)
    assert code == 0, json.dumps(report, indent=1)
    code, report = world.doctor(source=world.a.ns.name)
    assert code == 0, json.dumps(report, indent=1)


def test_a_run_changes_nothing_in_the_kernel_or_etcd(world):
    before = _snapshot(world)
    world.doctor()
    world.doctor(to=world.a2.ip)
    after = _snapshot(world)
    changed = {f"{k}/{part}": list(difflib.unified_diff(str(before[k][part]).splitlines(),
                                                         str(after[k].get(part)).splitlines(), n=0))
               for k in before if isinstance(before[k], dict)
               for part in before[k] if before[k][part] != after[k].get(part)}
    assert not changed, changed


@pytest.mark.parametrize("source,to,why", [
    ("flt-no-such-pod", None, "unknown pod"),
    ("10.244.250.250", None, "no attachment"),
    (None, "10.99.0.1", "outside the pod network"),
    (None, "not-an-ip", "not an IPv4 address"),
], ids=["unknown-netns", "unknown-pod-address", "outside-network", "not-an-address"])
def test_a_wrong_question_exits_2(world, source, to, why):
    code, report = world.doctor(to=to, source=source)
    assert code == 2 and report["ok"] is False and why in report["error"], report


def test_a_stopped_daemon_is_a_note_not_a_broken_hop(world):
    world.node1.stop_daemon()
    try:
        code, report = world.doctor()
        assert code == 0, json.dumps(report, indent=1)
        assert any("flanneletted does not answer" in n for n in report["notes"]), report["notes"]
    finally:
        world.restart(world.node1)


def test_etcd_out_of_reach_is_the_peer_lease_and_the_kernel_hops_still_answer(world):
    argv = world.node1.doctor_argv("--from", world.a.ns.path, "--to", world.b.ip, "--json")
    argv[argv.index("--etcd-endpoints") + 1] = "http://127.0.0.1:1"  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    took = time.monotonic() - start
    code, report = proc.returncode, json.loads(proc.stdout)
    assert code == 1 and report["first_failure"] == "peer-lease", json.dumps(report, indent=1)
    hop = next(h for h in report["hops"] if h["name"] == "peer-lease")
    assert hop["found"].startswith("cannot read etcd"), hop
    assert all(h["ok"] for h in report["hops"] if h["name"] in ("node-route", "vxlan-neighbour", "vxlan-fdb"))
    print(f"\ndoctor with etcd out of reach answered in {took:.1f} s")


# ---------------------------------------------------------------- one break at a time


def test_a_wrong_pod_mtu_is_the_pod_interface(world):
    world.a.ns.run("ip", "link", "set", "eth0", "mtu", "1400")
    try:
        report = world.assert_broken("pod-interface")
        assert "MTU 1400" in report["hops"][0]["found"]
    finally:
        world.a.ns.run("ip", "link", "set", "eth0", "mtu", str(_pod_mtu(world)))
    world.assert_sound()


def _pod_mtu(w: World) -> int:
    return int(w.node1.ns.out("cat", w.node1.subnet_file).split("FLANNEL_MTU=")[1].split()[0])


def test_a_missing_pod_route_is_the_pod_routes(world):
    routes = json.loads(world.a.ns.out("ip", "-j", "route", "show"))
    via = [r for r in routes if r.get("gateway")]
    assert via, routes
    for r in via:
        world.a.ns.run("ip", "route", "del", r["dst"])
    try:
        world.assert_broken("pod-routes")
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        for r in via:
            world.a.ns.run("ip", "route", "add", r["dst"], "via", r["gateway"], "dev", "eth0")
    world.assert_sound()


def test_a_veth_off_the_bridge_is_the_veth(world):
    veth = _veth(world)
    world.node1.ns.run("ip", "link", "set", veth, "nomaster")
    try:
        report = world.assert_broken("veth")
        assert "no bridge" in next(h for h in report["hops"] if h["name"] == "veth")["found"]
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.node1.ns.run("ip", "link", "set", veth, "master", "cni0")
        world.node1.ns.run("bridge", "link", "set", "dev", veth, "hairpin", "on")
    world.assert_sound()


def test_hairpin_off_is_the_veth(world):
    veth = _veth(world)
    world.node1.ns.run("bridge", "link", "set", "dev", veth, "hairpin", "off")
    try:
        report = world.assert_broken("veth")
        assert "hairpin off" in next(h for h in report["hops"] if h["name"] == "veth")["found"]
    finally:
        world.node1.ns.run("bridge", "link", "set", "dev", veth, "hairpin", "on")
    world.assert_sound()


def test_cni0_down_is_the_bridge(world):
    world.node1.ns.run("ip", "link", "set", "cni0", "down")
    try:
        world.assert_broken("bridge")
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.node1.ns.run("ip", "link", "set", "cni0", "up")
    world.assert_sound()


def test_a_missing_route_with_the_daemon_stopped_is_the_node_route(world):
    world.node1.stop_daemon()
    try:
        world.node1.ns.run("ip", "route", "del", str(world.node2.subnet))
        world.assert_broken("node-route")
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.restart(world.node1)
    world.assert_sound()


def test_a_deleted_fdb_entry_with_the_daemon_stopped_is_the_vxlan_fdb(world):
    mac = world.cluster.leases()[_key(world.node2)]["BackendData"]["VtepMAC"]
    world.node1.stop_daemon()
    try:
        world.node1.ns.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", world.node2.ip)
        report = world.assert_broken("vxlan-fdb")
        assert mac in next(h for h in report["hops"] if h["name"] == "vxlan-fdb")["fix"]
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.restart(world.node1)
    world.assert_sound()


def _key(node: Node) -> str:
    return f"{node.subnet.network_address}-{node.subnet.prefixlen}"


def test_a_wrong_neighbour_mac_with_the_daemon_stopped_is_the_vxlan_neighbour(world):
    world.node1.stop_daemon()
    try:
        world.node1.ns.run("ip", "neigh", "replace", str(world.node2.subnet.network_address),
                           "lladdr", "02:00:00:00:00:99", "dev", "flannel.1", "nud", "permanent")
        report = world.assert_broken("vxlan-neighbour")
        assert "02:00:00:00:00:99" in next(h for h in report["hops"] if h["name"] == "vxlan-neighbour")["found"]
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.restart(world.node1)
    world.assert_sound()


def test_a_peer_without_a_lease_is_the_peer_lease(world):
    world.node1.stop_daemon()
    world.node2.stop_daemon()
    subnet = world.node2.subnet
    try:
        world.cluster.delete_lease(subnet)
        report = world.assert_broken("peer-lease")
        assert f"no lease for {subnet}" in next(h for h in report["hops"] if h["name"] == "peer-lease")["found"]
    finally:
        world.restart(world.node2, world.node1)
    assert world.node2.subnet == subnet
    world.assert_sound()


def test_vxlan_filtered_on_the_underlay_is_the_underlay(world):
    switch = world.cluster.underlay.ns  # the switch bridging the nodes: a bridge-family rule
    rule = ("FORWARD", "-p", "IPv4", "--ip-proto", "udp", "--ip-dport", "8472", "-j", "DROP")
    switch.run("ebtables", "-A", *rule)
    try:
        report = world.assert_broken("underlay")
        hop = next(h for h in report["hops"] if h["name"] == "underlay")
        assert "answers" in hop["found"] and "8472" in hop["fix"], hop
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        switch.run("ebtables", "-D", *rule)
    world.assert_sound()


def test_a_vtep_mtu_below_the_pod_mtu_with_the_daemon_stopped_is_the_mtu(world):
    """(The kernel refuses a flannel.1 MTU above uplink - 50; smaller than the pods' is the
    mistake left to make: full-size pod packets no longer fit.)"""
    world.node1.stop_daemon()
    try:
        world.node1.ns.run("ip", "link", "set", "flannel.1", "mtu", "1400")
        report = world.assert_broken("mtu")
        hop = next(h for h in report["hops"] if h["name"] == "mtu")
        assert "flannel.1 MTU 1400" in hop["found"] and "DF probe" in hop["found"], hop
        assert not world.a.ns.run("ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(_pod_mtu(world) - 28),
                                  world.b.ip, check=False).returncode == 0
    finally:
        world.node1.ns.run("ip", "link", "set", "flannel.1", "mtu", str(_pod_mtu(world)))
        world.restart(world.node1)
    world.assert_sound()


def test_forward_policy_drop_without_our_rules_is_the_forward_rules(world):
    world.node1.ns.run("iptables-nft", "-w", "-P", "FORWARD", "DROP")
    try:
        report = world.assert_broken("forward-rules")
        hop = next(h for h in report["hops"] if h["name"] == "forward-rules")
        assert "iptables-nft: FORWARD policy DROP, forward rules absent" in hop["found"], hop
        assert not world.a.ping(world.b.ip, wait=0.5)
    finally:
        world.node1.ns.run("iptables-nft", "-w", "-P", "FORWARD", "ACCEPT")
    world.assert_sound()


# ---------------------------------------------------------------- the health mesh


def _reachable(w: World) -> dict[str, object]:
    """node1's `flannelette status --json`: peer subnet -> reachable."""
    out = w.node1.ns.run(f"{w.cluster.bin_dir}/flannelette", "status", "--socket", w.node1.cni_socket,
                         "--json").stdout
    return {e["subnet"]: e.get("reachable") for e in json.loads(out)["leases"]
            if e["subnet"] != str(w.node1.subnet)}


def _wait_reachable(w: World, want: bool, timeout: float = 15.0) -> float:
    start = time.monotonic()
    while True:
        if _reachable(w).get(str(w.node2.subnet)) is want:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, (want, _reachable(w), w.node1.log_tail())
        time.sleep(0.2)


def _metrics(node: Node) -> str:
    return node.ns.out("curl", "-sf", "http://127.0.0.1:8471/metrics")


def test_the_health_mesh_shows_a_broken_pair_in_status_and_metrics(world):
    """VXLAN dropped on the underlay: node1's mesh marks node2 unreachable (status column,
    /metrics), and reachable again once the rule goes."""
    _wait_reachable(world, True)
    peer = str(world.node2.subnet)
    switch = world.cluster.underlay.ns
    rule = ("FORWARD", "-p", "IPv4", "--ip-proto", "udp", "--ip-dport", "8472", "-j", "DROP")
    switch.run("ebtables", "-A", *rule)
    try:
        down = _wait_reachable(world, False)
        metrics = _metrics(world.node1)
        assert f'flannelette_peer_unreachable{{peer="{peer}"}} 1' in metrics, metrics
        assert "flannelette_peers_unreachable 1" in metrics
    finally:
        switch.run("ebtables", "-D", *rule)
    up = _wait_reachable(world, True)
    metrics = _metrics(world.node1)
    assert f'flannelette_peer_unreachable{{peer="{peer}"}} 0' in metrics and "flannelette_peers_unreachable 0" in metrics
    assert "flannelette_peer_rtt_seconds_count" in metrics
    print(f"\nmesh (one echo per peer every 0.5 s): unreachable after {down:.1f} s, reachable again after {up:.1f} s")


# ---------------------------------------------------------------- the node doctor


def test_a_sound_node_is_reported_sound(world):
    code, report = world.doctor(to="")
    assert code == 0, json.dumps(report, indent=1)
    assert [h["name"] for h in report["hops"]] == ["daemon", "lease", "subnet-env", "peers", "ipam"]
    assert "1 of 1 peers programmed" in report["hops"][3]["found"]
    assert "2 of 253 addresses reserved" in report["hops"][4]["found"], report["hops"][4]


def test_a_stopped_daemon_fails_the_node_doctor_and_a_lost_route_names_the_peer(world):
    world.node1.stop_daemon()
    try:
        world.node1.ns.run("ip", "route", "del", str(world.node2.subnet))
        code, report = world.doctor(to="")
        assert code == 1 and report["first_failure"] == "daemon", json.dumps(report, indent=1)
        peers = next(h for h in report["hops"] if h["name"] == "peers")
        assert not peers["ok"] and f"{world.node2.subnet} ({world.node2.ip}): node-route" in peers["found"], peers
        assert [h["name"] for h in report["hops"] if not h["ok"]] == ["daemon", "peers"]
    finally:
        world.restart(world.node1)
    assert world.doctor(to="")[0] == 0


def test_a_reservation_of_a_pod_that_is_gone_fails_the_ipam_check(world):
    ip = str(world.node1.subnet.network_address + 200)
    leaked = f"{world.node1.ipam_data}/cbr0/{ip}"
    with open(leaked, "w") as fh:
        fh.write("c0ffee-gone-container\r\neth0")
    try:
        code, report = world.doctor(to="")
        assert code == 1 and report["first_failure"] == "ipam", json.dumps(report, indent=1)
        assert f"pods gone: {ip} (c0ffee-gone-" in report["hops"][-1]["found"]
    finally:
        os.unlink(leaked)
    assert world.doctor(to="")[0] == 0


# ---------------------------------------------------------------- routed data planes


@pytest.mark.parametrize("data_plane", [("host-gw", False), ("vxlan", True)], ids=["host-gw", "vxlan-directrouting"])
def test_direct_routes_are_checked_via_the_peer_public_ip(data_plane):
    """host-gw and DirectRouting peers on the same segment: no VXLAN hops; the route via the
    peer's public IP is the one that matters (deleted here with the daemon stopped)."""
    backend, direct = data_plane
    with started_cluster(ClusterSpec(backend=backend, direct_routing=direct, nodes=2)) as cluster:
        w = World(cluster)
        report = w.assert_sound()
        names = [h["name"] for h in report["hops"]]
        assert "vxlan-fdb" not in names and "vxlan-neighbour" not in names, names
        route = next(h for h in report["hops"] if h["name"] == "node-route")
        assert f"via {w.node2.ip}" in route["found"], route
        assert w.a.ping(w.b.ip, wait=2)
        w.node1.stop_daemon()
        w.node1.ns.run("ip", "route", "del", str(w.node2.subnet))
        report = w.assert_broken("node-route")
        assert not w.a.ping(w.b.ip, wait=0.5)
