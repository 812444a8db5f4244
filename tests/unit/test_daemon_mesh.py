"""The health mesh's pure parts: the probe budget, the echo encoding, targets, the report."""
from __future__ import annotations

import ipaddress

from conf.flannel import Lease, LeaseAttrs, NetworkConfig
from daemon.mesh import PeerHealth, Schedule, checksum, echo_request, probe_target
from daemon.status import build_report
from daemon.etcd.watch import KnownLease


def lease(third: int, backend: str = "vxlan") -> Lease:
    data = {"VNI": 1, "VtepMAC": f"0a:00:00:00:00:{third:02x}"} if backend == "vxlan" else None
    return Lease(subnet=ipaddress.ip_network(f"10.244.{third}.0/24"),
                 attrs=LeaseAttrs.model_validate({"PublicIP": f"192.168.50.{third}", "BackendType": backend,
                                                  "BackendData": data}))


def test_the_schedule_never_exceeds_its_rate_however_many_peers():
    peers = {f"p{i}": PeerHealth(f"10.0.{i // 250}.{i % 250}") for i in range(5000)}
    schedule = Schedule(rate=20, interval=10)
    sent, now = 0, 0.0
    while now < 60:
        for key in schedule.due(peers, now):
            peers[key].last_probe = now
            sent += 1
        now += 0.05
    assert 20 * 60 - 20 <= sent <= 20 * 60 + 20  # 20 a second, 5000 peers or not
    probed = [p for p in peers.values() if p.last_probe > float("-inf")]
    assert len(probed) == sent  # oldest first: nobody twice before everyone once


def test_the_schedule_waits_the_interval_between_two_probes_of_one_peer():
    peers = {"a": PeerHealth("10.244.1.0"), "b": PeerHealth("10.244.2.0")}
    schedule = Schedule(rate=100, interval=1.0)
    times: dict[str, list[float]] = {"a": [], "b": []}
    now = 0.0
    while now < 5:
        for key in schedule.due(peers, now):
            peers[key].last_probe = now
            times[key].append(now)
        now += 0.05
    for seen in times.values():
        assert 5 <= len(seen) <= 6
        assert all(b - a >= 1.0 - 1e-9 for a, b in zip(seen, seen[1:]))


def test_an_echo_request_carries_a_valid_checksum():
    packet = echo_request(0x1234, 7)
    assert packet[0] == 8 and packet[4:8] == bytes.fromhex("12340007")
    assert checksum(packet) == 0  # the sum over a packet with its checksum is 0


def test_vxlan_peers_are_probed_through_the_tunnel_host_gw_peers_at_their_public_ip():
    assert probe_target(lease(2)) == "10.244.2.0"
    assert probe_target(lease(3, "host-gw")) == "192.168.50.3"


def test_the_status_report_says_which_peers_answer():
    own, peer, silent = lease(1), lease(2), lease(3)
    config = NetworkConfig.model_validate({"Network": "10.244.0.0/16"})
    known = [KnownLease(x, 0) for x in (own, peer, silent)]
    answers = {str(peer.subnet): True, str(silent.subnet): False}
    report = build_report(config, own, known, lambda x: True, None, True, True, 1,
                          lambda x: answers.get(str(x.subnet)))
    got = {e["subnet"]: e.get("reachable", "absent") for e in report["leases"]}
    assert got == {"10.244.1.0/24": "absent", "10.244.2.0/24": True, "10.244.3.0/24": False}
    without = build_report(config, own, known, lambda x: True, None, True, True, 1)
    assert all("reachable" not in e for e in without["leases"])


def test_the_mesh_gauges_follow_each_change_of_state_and_of_the_peer_set():
    from daemon.mesh import HealthMesh
    from daemon.metrics import Metrics

    own, a, b, c = lease(1), lease(2), lease(3), lease(4, "host-gw")
    peers, metrics = [own, a, b, c], Metrics()
    mesh = HealthMesh(lambda: list(peers), lambda: own, metrics)
    mesh._sync_peers()
    assert set(mesh.health) == {"10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"}
    mesh._mark("10.244.2.0/24", False)
    mesh._mark("10.244.3.0/24", True)
    mesh._export()
    assert (metrics.get("peers_probed"), metrics.get("peers_unreachable")) == (2, 1)
    assert metrics.get("peer_unreachable", peer="10.244.2.0/24") == 1
    mesh._mark("10.244.2.0/24", True)  # back: its series goes to 0, the gauges follow
    mesh._mark("10.244.4.0/24", False)
    mesh._export()
    assert (metrics.get("peers_probed"), metrics.get("peers_unreachable")) == (3, 1)
    assert metrics.get("peer_unreachable", peer="10.244.2.0/24") == 0
    peers.remove(c)  # a peer leaves: its series goes to 0 and it no longer counts
    mesh._sync_peers()
    mesh._export()
    assert (metrics.get("peers_probed"), metrics.get("peers_unreachable")) == (2, 0)
    assert metrics.get("peer_unreachable", peer="10.244.4.0/24") == 0
    mesh.health["10.244.2.0/24"].last_probe = 50.0
    mesh.health["10.244.3.0/24"].last_probe = 40.0
    peers[2] = lease(3, "host-gw")  # a peer's probe target changes: probed afresh, first
    mesh._sync_peers()
    mesh._export()
    assert (metrics.get("peers_probed"), metrics.get("peers_unreachable")) == (1, 0)
    assert mesh.health["10.244.3.0/24"].target == "192.168.50.3"
    assert mesh.schedule.due(mesh.health, 100.0) == ["10.244.3.0/24"]


def test_the_schedule_drops_a_removed_peer_and_takes_an_added_one_after_reset():
    peers = {"a": PeerHealth("10.244.1.0"), "b": PeerHealth("10.244.2.0")}
    schedule = Schedule(rate=100, interval=1.0)
    first = schedule.due(peers, 0.0)
    assert len(first) == 1
    peers[first[0]].last_probe = 0.0
    del peers["a"]
    peers["c"] = PeerHealth("10.244.3.0")  # as many peers as before: the caller resets
    schedule.reset()
    seen = set()
    for step in range(1, 40):
        for key in schedule.due(peers, step * 0.05):
            peers[key].last_probe = step * 0.05
            seen.add(key)
    assert seen == {"b", "c"}
    del peers["b"]  # one fewer: rebuilt without a reset
    later = {key for step in range(40, 100) for key in schedule.due(peers, step * 0.05)}
    assert later == {"c"}


def test_the_peer_set_kept_change_by_change_is_the_one_synced_afresh():
    """Peers coming, going and changing backend a few at a time: the mesh's peers, their
    states and its gauges match a mesh that synced the final set at once, and a full round
    of the schedule probes every peer exactly once."""
    import random
    from daemon.mesh import HealthMesh
    from daemon.metrics import Metrics

    rng, own = random.Random(5), lease(1)
    known = {n: lease(n) for n in range(2, 120)}
    mesh = HealthMesh(lambda: list(known.values()), lambda: own, Metrics(), rate=1000.0, interval=1.0)
    mesh._sync_peers()
    for step in range(200):
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(1, 140)  # 1: our own subnet, in the list as the watcher has it
            if rng.random() < 0.3:
                known.pop(n, None)
            else:
                known[n] = lease(n, rng.choice(["vxlan", "host-gw"]))
        mesh._sync_peers()
        for subnet in rng.sample(sorted(mesh.health), 3):
            mesh._mark(subnet, rng.random() < 0.5)
    fresh = HealthMesh(lambda: list(known.values()), lambda: own, Metrics())
    fresh._sync_peers()
    assert {s: p.target for s, p in mesh.health.items()} == {s: p.target for s, p in fresh.health.items()}
    states = [p.reachable for p in mesh.health.values()]
    assert (mesh._probed, mesh._unreachable) == (sum(s is not None for s in states), states.count(False))
    probed = []
    for tick in range(1, 200):
        for subnet in mesh.schedule.due(mesh.health, 1000.0 + tick * 0.005):
            mesh.health[subnet].last_probe = 1000.0 + tick * 0.005
            probed.append(subnet)
    assert sorted(probed) == sorted(mesh.health)
