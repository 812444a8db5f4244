"""The pure allocator over the in-memory store: ranges, round-robin, idempotence, GC."""
import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest

from conf.errors import CniError
from conf.plugin import IpamRange
from ipam.allocator import Allocator, collect_garbage, held_by, make_range_sets, release
from ipam.fake_store import FakeStore

ip = ipaddress.ip_address


def sets(*range_sets):
    """sets([{"subnet": ...}, ...], ...) -> canonical range sets."""
    return make_range_sets([[IpamRange.model_validate(r) for r in rs] for rs in range_sets])


def net24():
    return sets([{"subnet": "10.1.0.0/24"}])


def allocate(alloc, cid="c1", ifname="eth0", requested=()):
    return [str(a.ip) for a in alloc.allocate(cid, ifname, [ip(r) for r in requested])]


def error_of(fn, *args, **kw):
    with pytest.raises(CniError) as e:
        fn(*args, **kw)
    return e.value.code, e.value.msg


# ---------------------------------------------------------------- ranges


def test_canonical_range_defaults_like_host_local():
    (r,), = net24()
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    (r6,), = sets([{"subnet": "fc00::/120"}])
    assert (str(r6.start), str(r6.end)) == ("fc00::1", "fc00::ff")  # IPv6 has no broadcast


@pytest.mark.parametrize("spec,field", [
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.0"}, "ipam.ranges.0.0.rangeStart"),
    ({"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.255"}, "ipam.ranges.0.0.rangeEnd"),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.255"}, "ipam.ranges.0.0.rangeStart"),
    ({"subnet": "fc00::/120", "rangeStart": "fc00::"}, "ipam.ranges.0.0.rangeStart"),
])
def test_range_bounds_are_checked_naming_the_field(spec, field):
    code, msg = error_of(sets, [spec])
    assert code == 7 and f"'{field}" in msg


def test_overlapping_ranges_are_refused_across_sets():
    code, msg = error_of(sets, [{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}])
    assert code == 7 and "ipam.ranges.1.0" in msg and "overlaps ipam.ranges.0.0" in msg


# ---------------------------------------------------------------- allocation


def test_first_address_skips_network_and_gateway_then_round_robin():
    alloc = Allocator(FakeStore(), net24())
    assert allocate(alloc, "a") == ["10.1.0.2"]
    assert allocate(alloc, "b") == ["10.1.0.3"]
    release(alloc.store, "a", "eth0")
    assert allocate(alloc, "c") == ["10.1.0.4"]  # not the freshly released .2


def test_result_fields():
    (a,) = Allocator(FakeStore(), sets([{"subnet": "10.1.0.0/16", "gateway": "10.1.255.254"}])).allocate("c", "eth0")
    assert (a.address, str(a.range.gateway), a.range_id, a.new) == ("10.1.0.1/16", "10.1.255.254", 0, True)


def test_add_again_returns_the_held_address_without_a_new_reservation():
    store = FakeStore()
    alloc = Allocator(store, net24())
    first = alloc.allocate("c1", "eth0")
    again = alloc.allocate("c1", "eth0")
    assert [a.ip for a in again] == [a.ip for a in first] and not again[0].new
    assert len(store.held) == 1
    assert allocate(alloc, "c1", "net1") == ["10.1.0.3"]  # another interface is another attachment


def test_legacy_id_only_reservation_counts_as_held():
    store = FakeStore({ip("10.1.0.7"): ("c1", "")})
    assert allocate(Allocator(store, net24()), "c1", "eth0") == ["10.1.0.7"]


def test_wraps_from_the_end_to_the_start():
    store = FakeStore()
    store.last[0] = ip("10.1.0.254")
    assert allocate(Allocator(store, net24())) == ["10.1.0.2"]


def test_hint_outside_the_set_starts_from_the_first_address():
    store = FakeStore()
    store.last[0] = ip("192.168.0.9")
    assert allocate(Allocator(store, net24())) == ["10.1.0.2"]


def test_the_last_reserved_address_is_tried_last_not_skipped():
    store = FakeStore()
    alloc = Allocator(store, sets([{"subnet": "10.1.0.0/29"}]))
    got = [allocate(alloc, f"c{i}")[0] for i in range(5)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    release(store, "c4", "eth0")  # the last reserved one is the only free address
    assert allocate(alloc, "new") == ["10.1.0.6"]


def test_full_24_gives_253_addresses_then_names_the_range():
    alloc = Allocator(FakeStore(), net24())
    got = {allocate(alloc, f"c{i}")[0] for i in range(253)}
    assert len(got) == 253 and "10.1.0.1" not in got and "10.1.0.0" not in got and "10.1.0.255" not in got
    code, msg = error_of(alloc.allocate, "one-too-many", "eth0")
    assert (code, msg) == (100, "no IP addresses available in range set: 10.1.0.1-10.1.0.254")


def test_range_start_and_end_and_several_ranges_in_a_set():
    rs = sets([{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.11"},
               {"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.1", "rangeEnd": "10.2.0.2"}])
    alloc = Allocator(FakeStore(), rs)
    got = [alloc.allocate(f"c{i}", "eth0")[0] for i in range(3)]
    assert [(str(a.ip), str(a.range.gateway)) for a in got] == [
        ("10.1.0.10", "10.1.0.1"), ("10.1.0.11", "10.1.0.1"), ("10.2.0.2", "10.2.0.1")]
    code, msg = error_of(alloc.allocate, "c9", "eth0")
    assert code == 100 and msg.endswith("10.1.0.10-10.1.0.11,10.2.0.1-10.2.0.2")


def test_dual_stack_gives_one_address_per_set():
    alloc = Allocator(FakeStore(), sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fc00::/64"}]))
    got = alloc.allocate("c1", "eth0")
    assert [a.address for a in got] == ["10.1.0.2/24", "fc00::2/64"]
    assert [a.range_id for a in got] == [0, 1]


def test_failure_in_a_later_set_releases_the_earlier_ones():
    rs = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}])  # set 1: only .2 after gateway .1
    store = FakeStore({ip("10.2.0.2"): ("other", "eth0")})
    code, _ = error_of(Allocator(store, rs).allocate, "c1", "eth0")
    assert code == 100 and store.held == {ip("10.2.0.2"): ("other", "eth0")}


def test_failure_keeps_an_address_the_attachment_already_held():
    rs = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}])
    store = FakeStore({ip("10.1.0.50"): ("c1", "eth0"), ip("10.2.0.2"): ("other", "eth0")})
    error_of(Allocator(store, rs).allocate, "c1", "eth0")
    assert ip("10.1.0.50") in store.held


# ---------------------------------------------------------------- requested addresses


def test_requested_address_is_reserved_exactly():
    store = FakeStore()
    assert allocate(Allocator(store, net24()), requested=["10.1.0.77"]) == ["10.1.0.77"]
    assert store.last[0] == ip("10.1.0.77")


def test_requested_addresses_in_dual_stack_go_to_their_set():
    alloc = Allocator(FakeStore(), sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fc00::/64"}]))
    assert allocate(alloc, requested=["fc00::99", "10.1.0.9"]) == ["10.1.0.9", "fc00::99"]


@pytest.mark.parametrize("held,requested,needle", [
    ({}, "10.1.0.1", "gateway"),
    ({"10.1.0.9": ("other", "eth0")}, "10.1.0.9", "not available"),
    ({}, "10.9.0.9", "not inside any configured range"),
    ({"10.1.0.5": ("c1", "eth0")}, "10.1.0.9", "already holds 10.1.0.5"),
])
def test_requested_address_errors_are_101(held, requested, needle):
    store = FakeStore({ip(k): v for k, v in held.items()})
    before = dict(store.held)
    code, msg = error_of(allocate, Allocator(store, net24()), requested=[requested])
    assert code == 101 and needle in msg and store.held == before


def test_requesting_the_held_address_again_is_idempotent():
    store = FakeStore({ip("10.1.0.9"): ("c1", "eth0")})
    assert allocate(Allocator(store, net24()), requested=["10.1.0.9"]) == ["10.1.0.9"]


def test_huge_ipv6_range_is_walked_lazily():
    alloc = Allocator(FakeStore(), sets([{"subnet": "fc00::/64"}]))
    assert allocate(alloc) == ["fc00::2"]


def test_concurrent_threads_get_distinct_addresses():
    alloc = Allocator(FakeStore(), net24())

    def worker(n):
        return [allocate(alloc, f"t{n}-{i}")[0] for i in range(30)]
    with ThreadPoolExecutor(8) as pool:  # an exception in a worker re-raises here
        got = [a for batch in pool.map(worker, range(8)) for a in batch]
    assert len(got) == 240 and len(set(got)) == 240

# ---------------------------------------------------------------- release, lookup, GC


def test_release_only_touches_the_attachment():
    store = FakeStore({ip("10.1.0.2"): ("c1", "eth0"), ip("10.1.0.3"): ("c1", "net1"),
                       ip("10.1.0.4"): ("c2", "eth0"), ip("10.1.0.5"): ("c1", "")})
    assert [str(x) for x in release(store, "c1", "eth0")] == ["10.1.0.2", "10.1.0.5"]
    assert sorted(map(str, store.held)) == ["10.1.0.3", "10.1.0.4"]
    assert release(store, "c1", "eth0") == []
    assert [str(x) for x in held_by(store, "c1", "net1")] == ["10.1.0.3"]


def test_gc_releases_all_but_the_valid_attachments():
    store = FakeStore({ip("10.1.0.2"): ("keep", "eth0"), ip("10.1.0.3"): ("keep", "net1"),
                       ip("10.1.0.4"): ("gone", "eth0"), ip("10.1.0.5"): ("keep", ""),
                       ip("10.1.0.6"): ("gone", ""), ip("10.1.0.7"): ("", "")})
    released = collect_garbage(store, [("keep", "eth0")])
    assert sorted(map(str, released)) == ["10.1.0.3", "10.1.0.4", "10.1.0.6", "10.1.0.7"]
    assert sorted(map(str, store.held)) == ["10.1.0.2", "10.1.0.5"]


def test_gc_with_an_empty_list_releases_everything():
    store = FakeStore({ip("10.1.0.2"): ("a", "eth0"), ip("fc00::2"): ("a", "eth0")})
    collect_garbage(store, [])
    assert store.held == {}
