"""The pure planner: leases -> wanted kernel objects -> changes, as tables."""
from __future__ import annotations

import pytest

from cni_plugin.netlink import Fdb, Neigh, Route
from conf.flannel import Lease, LeaseAttrs
from daemon.dataplane.planner import HOST_GW, VXLAN, KernelState, Plan, Topology, diff, lease_key, plan

VX = Topology(VXLAN, "eth0", vtep4="flannel.1")
VX_DUAL = Topology(VXLAN, "eth0", vtep4="flannel.1", vtep6="flannel-v6.1", ipv6=True)
VX_DIRECT = Topology(VXLAN, "eth0", vtep4="flannel.1", direct_routing=True)
HGW = Topology(HOST_GW, "eth0")
HGW_DUAL = Topology(HOST_GW, "eth0", ipv6=True)


def vxlan_lease(n: int, mac: str | None = None, public: str | None = None, v6: bool = False) -> Lease:
    mac = mac or f"02:00:00:00:00:{n:02x}"
    attrs = {"PublicIP": public or f"192.168.50.{n}", "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": mac}}
    extra = {}
    if v6:
        attrs["PublicIPv6"] = f"fd50::{n}"
        attrs["BackendV6Data"] = {"VNI": 1, "VtepMAC": f"06:00:00:00:00:{n:02x}"}
        extra["ipv6_subnet"] = f"fc00:0:0:{n}::/64"
    return Lease(subnet=f"10.244.{n}.0/24", attrs=LeaseAttrs.model_validate(attrs), **extra)


def hostgw_lease(n: int, v6: bool = False) -> Lease:
    attrs = {"PublicIP": f"192.168.50.{n}", "BackendType": "host-gw"}
    extra = {}
    if v6:
        attrs["PublicIPv6"] = f"fd50::{n}"
        extra["ipv6_subnet"] = f"fc00:0:0:{n}::/64"
    return Lease(subnet=f"10.244.{n}.0/24", attrs=LeaseAttrs.model_validate(attrs), **extra)


def objects(p: Plan) -> set:
    return set(p.neighs.values()) | set(p.fdbs.values()) | set(p.routes.values())


OWN = vxlan_lease(1)

PLAN_CASES = [
    ("vxlan peer: neighbour, fdb, onlink route", VX, [OWN, vxlan_lease(2)], set(), {
        Neigh("flannel.1", "10.244.2.0", "02:00:00:00:00:02"),
        Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2"),
        Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True)}),
    ("own lease excluded", VX, [OWN], set(), set()),
    ("MAC upper case is normalised", VX, [vxlan_lease(3, mac="02:AB:CD:EF:00:03")], set(), {
        Neigh("flannel.1", "10.244.3.0", "02:ab:cd:ef:00:03"),
        Fdb("flannel.1", "02:ab:cd:ef:00:03", "192.168.50.3"),
        Route("10.244.3.0/24", "10.244.3.0", "flannel.1", True)}),
    ("DirectRouting: connected peer gets a direct route", VX_DIRECT,
     [vxlan_lease(2), vxlan_lease(3, public="10.9.0.3")], {"192.168.50.2"}, {
         Route("10.244.2.0/24", "192.168.50.2", "eth0", False),
         Neigh("flannel.1", "10.244.3.0", "02:00:00:00:00:03"),
         Fdb("flannel.1", "02:00:00:00:00:03", "10.9.0.3"),
         Route("10.244.3.0/24", "10.244.3.0", "flannel.1", True)}),
    ("connected peer without DirectRouting stays on vxlan", VX, [vxlan_lease(2)], {"192.168.50.2"}, {
        Neigh("flannel.1", "10.244.2.0", "02:00:00:00:00:02"),
        Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2"),
        Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True)}),
    ("dual stack: both VTEPs", VX_DUAL, [vxlan_lease(2, v6=True)], set(), {
        Neigh("flannel.1", "10.244.2.0", "02:00:00:00:00:02"),
        Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2"),
        Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True),
        Neigh("flannel-v6.1", "fc00:0:0:2::", "06:00:00:00:00:02"),
        Fdb("flannel-v6.1", "06:00:00:00:00:02", "fd50::2"),
        Route("fc00:0:0:2::/64", "fc00:0:0:2::", "flannel-v6.1", True)}),
    ("dual stack node, v4-only peer", VX_DUAL, [vxlan_lease(2)], set(), {
        Neigh("flannel.1", "10.244.2.0", "02:00:00:00:00:02"),
        Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2"),
        Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True)}),
    ("host-gw: route via the peer", HGW, [hostgw_lease(1), hostgw_lease(2)], {"192.168.50.2"}, {
        Route("10.244.2.0/24", "192.168.50.2", "eth0", False)}),
    ("host-gw dual stack", HGW_DUAL, [hostgw_lease(2, v6=True)], {"192.168.50.2", "fd50::2"}, {
        Route("10.244.2.0/24", "192.168.50.2", "eth0", False),
        Route("fc00:0:0:2::/64", "fd50::2", "eth0", False)}),
]


@pytest.mark.parametrize("name,topo,leases,connected,want", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_plan(name, topo, leases, connected, want):
    own = hostgw_lease(1) if topo.backend == HOST_GW else OWN
    p = plan(own, leases, topo, connected)
    assert objects(p) == want
    assert not p.refused


REFUSED_CASES = [
    ("host-gw peer behind a gateway", HGW, hostgw_lease(2), "not on-link on eth0"),
    ("vxlan node, host-gw lease", VX, hostgw_lease(2), "not vxlan"),
    ("host-gw node, vxlan lease", HGW, vxlan_lease(2), "not host-gw"),
    ("bad VtepMAC", VX, vxlan_lease(2, mac="zz:00"), "no valid VtepMAC"),
]


@pytest.mark.parametrize("name,topo,lease,why", REFUSED_CASES, ids=[c[0] for c in REFUSED_CASES])
def test_refused(name, topo, lease, why):
    p = plan(None, [lease], topo, set())
    assert objects(p) == set()
    assert why in p.refused[lease.key]


def test_duplicate_mac_refuses_the_second_peer():
    a, b = vxlan_lease(2, mac="02:00:00:00:00:aa"), vxlan_lease(3, mac="02:00:00:00:00:aa")
    p = plan(None, [a, b], VX)
    assert a.key not in p.refused and "already used" in p.refused[b.key]
    assert len(p.routes) == 1


def test_objects_are_grouped_by_lease():
    p = plan(OWN, [vxlan_lease(2), vxlan_lease(3)], VX)
    assert {len(objs) for objs in p.by_lease.values()} == {3}
    assert Route("10.244.3.0/24", "10.244.3.0", "flannel.1", True) in p.by_lease[vxlan_lease(3).key]


# ---------------------------------------------------------------- diff

OWNED = {"flannel.1", "eth0"}


def state_of(p: Plan) -> KernelState:
    return KernelState(dict(p.neighs), list(p.fdbs.values()), dict(p.routes))


def test_diff_of_empty_kernel_sets_everything_in_order():
    p = plan(OWN, [vxlan_lease(2), vxlan_lease(3)], VX)
    ch = diff(p, KernelState(), OWNED)
    assert (len(ch.set_neighs), len(ch.set_fdbs), len(ch.set_routes)) == (2, 2, 2)
    assert not (ch.del_routes or ch.del_fdbs or ch.del_neighs or ch.del_stale_fdbs)


def test_diff_of_converged_kernel_is_empty():
    p = plan(OWN, [vxlan_lease(2), vxlan_lease(3)], VX)
    ch = diff(p, state_of(p), OWNED)
    assert ch.empty and ch.unchanged == 6


def test_gone_lease_loses_route_fdb_and_neighbour():
    before = plan(OWN, [vxlan_lease(2), vxlan_lease(3)], VX)
    after = plan(OWN, [vxlan_lease(2)], VX)
    ch = diff(after, state_of(before), OWNED)
    assert ch.del_routes == [Route("10.244.3.0/24", "10.244.3.0", "flannel.1", True)]
    assert ch.del_fdbs == [Fdb("flannel.1", "02:00:00:00:00:03", "192.168.50.3")]
    assert ch.del_neighs == [Neigh("flannel.1", "10.244.3.0", "02:00:00:00:00:03")]
    assert not (ch.set_neighs or ch.set_fdbs or ch.set_routes)


def test_peer_reboot_with_new_mac_replaces_neighbour_and_drops_old_fdb():
    before = plan(OWN, [vxlan_lease(2)], VX)
    after = plan(OWN, [vxlan_lease(2, mac="02:00:00:00:99:02")], VX)
    ch = diff(after, state_of(before), OWNED)
    assert ch.set_neighs == [Neigh("flannel.1", "10.244.2.0", "02:00:00:00:99:02")]
    assert ch.set_fdbs == [Fdb("flannel.1", "02:00:00:00:99:02", "192.168.50.2")]
    assert ch.del_fdbs == [Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2")]
    assert not ch.set_routes and not ch.del_neighs


def test_changed_public_ip_removes_the_old_remote_first():
    before = plan(OWN, [vxlan_lease(2)], VX)
    after = plan(OWN, [vxlan_lease(2, public="192.168.50.99")], VX)
    ch = diff(after, state_of(before), OWNED)
    assert ch.del_stale_fdbs == [Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.2")]
    assert ch.set_fdbs == [Fdb("flannel.1", "02:00:00:00:00:02", "192.168.50.99")]


def test_switch_to_direct_routing_replaces_route_and_drops_vxlan_entries():
    before = plan(OWN, [vxlan_lease(2)], VX)
    after = plan(OWN, [vxlan_lease(2)], VX_DIRECT, {"192.168.50.2"})
    ch = diff(after, state_of(before), OWNED)
    assert ch.set_routes == [Route("10.244.2.0/24", "192.168.50.2", "eth0", False)]
    assert len(ch.del_fdbs) == 1 and len(ch.del_neighs) == 1 and not ch.del_routes


def test_foreign_devices_are_never_cleaned():
    stray = Route("10.244.9.0/24", "172.16.0.1", "eth1", False)
    ch = diff(plan(OWN, [], VX), KernelState(routes={stray.dst: stray}), OWNED)
    assert ch.empty


def test_hand_changed_route_is_replaced():
    p = plan(OWN, [vxlan_lease(2)], VX)
    st = state_of(p)
    st.routes["10.244.2.0/24"] = Route("10.244.2.0/24", "192.168.50.7", "eth0", False)
    ch = diff(p, st, OWNED)
    assert ch.set_routes == [p.routes["10.244.2.0/24"]] and not ch.del_routes


@pytest.mark.parametrize("lease", [vxlan_lease(7), vxlan_lease(9, v6=True)], ids=["v4", "dual"])
def test_cheap_lease_key_is_flannels_key(lease):
    assert lease_key(lease) == lease.key


def test_a_plan_with_the_memo_of_the_last_one_is_the_plan_made_afresh():
    from daemon.dataplane.planner import Memo
    peers = [vxlan_lease(n) for n in range(2, 12)] + [vxlan_lease(13, v6=True), hostgw_lease(14)]
    clash = vxlan_lease(12, mac=peers[3].attrs.backend_data["VtepMAC"])  # a VtepMAC already taken
    memo = Memo()
    topo = VX

    def same(leases, connected=frozenset(), topology=topo, own=None):
        fresh, remembered = plan(own, leases, topology, connected), plan(own, leases, topology, connected, memo)
        assert (remembered.neighs, remembered.fdbs, remembered.routes, remembered.refused) == \
            (fresh.neighs, fresh.fdbs, fresh.routes, fresh.refused)
        assert {k: list(v) for k, v in remembered.by_lease.items()} == \
            {k: list(v) for k, v in fresh.by_lease.items()}
    same(peers + [clash])
    same(peers + [clash])  # all from the memo
    same(peers + [clash], own=peers[0])  # our own lease is never planned, memo or not
    same(peers + [clash])
    same([clash] + peers[:3] + peers[4:])  # the clash planned first now wins its MAC
    same([clash] + peers)  # and the lease it clashes with is refused
    same(peers[:5], topology=VX_DIRECT, connected={"192.168.50.2"})
    same(peers[:5], topology=VX_DIRECT)
    same(peers, topology=VX_DUAL)
    same(peers, topology=HGW, connected={"192.168.50.14"})
    same(peers, topology=HGW)


def test_the_changes_since_the_last_plan_are_those_of_a_full_diff_against_it():
    from daemon.dataplane.planner import Memo, diff_since
    peers = [vxlan_lease(n) for n in range(2, 12)] + [vxlan_lease(13, v6=True)]
    moved = vxlan_lease(5, public="192.168.60.5")  # same subnet, new PublicIP: a stale FDB
    clash = vxlan_lease(12, mac=peers[3].attrs.backend_data["VtepMAC"])
    owned = {"flannel.1", "flannel-v6.1", "eth0"}
    for topo in (VX, VX_DUAL):
        for before, after in ((peers, peers), (peers, peers[:4] + peers[5:]),
                              (peers[:4] + peers[5:], peers), (peers, peers[:3] + [moved] + peers[4:]),
                              (peers, [clash] + peers), ([clash] + peers, peers), (peers, [])):
            memo = Memo()
            last, wanted = plan(None, before, topo, memo=memo), plan(None, after, topo, memo=memo)
            full, since = diff(wanted, last.as_kernel_state(), owned), diff_since(wanted, last, owned)
            for field in ("set_neighs", "del_stale_fdbs", "set_fdbs", "set_routes", "del_routes",
                          "del_fdbs", "del_neighs"):
                assert sorted(getattr(since, field)) == sorted(getattr(full, field)), field
            assert since.unchanged == full.unchanged


@pytest.mark.parametrize("topo", [VX, VX_DUAL], ids=["v4", "dual"])
def test_plans_after_a_few_lease_changes_each_match_the_plan_made_afresh(topo):
    """Leases coming, going, replaced (new PublicIP, a clashing VtepMAC) a few at a time, as
    the watcher reports them: every memo plan equals a fresh one, and diff_since from the
    previous plan equals a full diff."""
    import random
    from daemon.dataplane.planner import Memo, diff_since
    rng = random.Random(3)
    owned = {"flannel.1", "flannel-v6.1", "eth0"}
    known = {n: vxlan_lease(n, v6=n % 3 == 0) for n in range(2, 200)}
    memo, last, broken = Memo(), None, []
    for step in range(80):
        for n in broken:  # a refused lease is put right the step after
            if n in known:
                known[n] = vxlan_lease(n, v6=n % 3 == 0)
        broken = []
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(2, 230)
            roll = rng.random()
            if roll < 0.3:
                known.pop(n, None)
            elif roll < 0.8:
                known[n] = vxlan_lease(n, public=f"192.168.{rng.randint(50, 60)}.{n}", v6=n % 3 == 0)
            elif roll < 0.9:
                known[n] = vxlan_lease(n, mac=f"02:00:00:00:00:{rng.randint(2, 230):02x}")
                broken.append(n)
            else:
                known[n] = vxlan_lease(n, mac="not-a-mac")
                broken.append(n)
        leases = list(known.values())
        fresh, remembered = plan(None, leases, topo), plan(None, leases, topo, memo=memo)
        assert (remembered.neighs, remembered.fdbs, remembered.routes, remembered.refused) == \
            (fresh.neighs, fresh.fdbs, fresh.routes, fresh.refused), step
        assert {k: list(v) for k, v in remembered.by_lease.items()} == \
            {k: list(v) for k, v in fresh.by_lease.items()}, step
        if last is not None:
            full, since = diff(remembered, last.as_kernel_state(), owned), diff_since(remembered, last, owned)
            for name in ("set_neighs", "del_stale_fdbs", "set_fdbs", "set_routes", "del_routes",
                         "del_fdbs", "del_neighs"):
                assert sorted(getattr(since, name)) == sorted(getattr(full, name)), (step, name)
            assert since.unchanged == full.unchanged
        last = remembered
