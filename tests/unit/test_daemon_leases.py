"""Lease choice and upkeep (daemon/etcd/leases.py) against an in-memory etcd stand-in."""
from __future__ import annotations

import ipaddress
import random

import pytest

from conf.flannel import LeaseAttrs, SubnetEnv, load_network_config
from daemon.etcd.leases import (DuplicateHolderError, LeaseError, LeaseLostError, LeaseManager,
                           fits_config, parse_leases, pick_free_subnet, previous_subnet)
from daemon.etcd.registry import KeyValue
from tests.support.fake_registry import FakeRegistry

CONFIG = load_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
DUAL = load_network_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                           '"IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}')


def attrs(ip: str, mac: str = "aa:bb:cc:00:00:01", v6: str | None = None) -> LeaseAttrs:
    return LeaseAttrs(PublicIP=ip, PublicIPv6=v6, BackendType="vxlan",
                      BackendData={"VNI": 1, "VtepMAC": mac})


def manager(reg, config=CONFIG, seed=1, ttl=86400, margin=3600, clock=lambda: 1000.0,
            state_dir=""):
    return LeaseManager(reg, config, ttl, margin, rng=random.Random(seed), clock=clock,
                        state_dir=state_dir)


def test_a_new_node_gets_a_free_subnet_inside_min_max_and_the_lease_json():
    reg = FakeRegistry()
    own = manager(reg).acquire(attrs("192.168.1.10"))
    assert own.subnet.prefixlen == 24 and own.subnet.subnet_of(ipaddress.ip_network("10.244.0.0/16"))
    assert own.subnet != ipaddress.ip_network("10.244.0.0/24")  # SubnetMin skips the first
    value, _ = reg.kv[own.key]
    assert value == ('{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"}}')
    assert own.expiration == 1000.0 + 86400


def test_many_nodes_never_share_a_subnet():
    reg = FakeRegistry()
    subnets = {manager(reg, seed=i).acquire(attrs(f"192.168.1.{i}")).subnet for i in range(1, 60)}
    assert len(subnets) == 59


def test_the_lease_held_by_our_public_ip_is_reused_with_new_attrs():
    reg = FakeRegistry()
    first = manager(reg, seed=1).acquire(attrs("192.168.1.10", mac="aa:00:00:00:00:01"))
    again = manager(reg, seed=2).acquire(attrs("192.168.1.10", mac="aa:00:00:00:00:02"))
    assert again.subnet == first.subnet
    assert len(reg.kv) == 1 and "aa:00:00:00:00:02" in reg.kv[first.key][0]


def test_a_held_lease_that_no_longer_fits_the_config_is_replaced():
    reg = FakeRegistry()
    reg.kv["10.99.1.0-24"] = (attrs("192.168.1.10").dump_json(), 5)
    own = manager(reg).acquire(attrs("192.168.1.10"))
    assert "10.99.1.0-24" not in reg.kv
    assert own.subnet.subnet_of(ipaddress.ip_network("10.244.0.0/16"))


def test_the_subnet_of_an_old_subnet_env_is_taken_again_when_free():
    env = SubnetEnv(networks=["10.244.0.0/16"], subnet="10.244.77.1/24", mtu=1450, ipmasq=False)
    own = manager(FakeRegistry()).acquire(attrs("192.168.1.10"), previous=env)
    assert str(own.subnet) == "10.244.77.0/24"


def test_the_subnet_of_an_old_subnet_env_is_not_taken_from_another_node():
    reg = FakeRegistry()
    reg.kv["10.244.77.0-24"] = (attrs("192.168.1.99").dump_json(), 5)
    env = SubnetEnv(networks=["10.244.0.0/16"], subnet="10.244.77.1/24", mtu=1450, ipmasq=False)
    own = manager(reg).acquire(attrs("192.168.1.10"), previous=env)
    assert str(own.subnet) != "10.244.77.0/24"
    assert "192.168.1.99" in reg.kv["10.244.77.0-24"][0]


def test_losing_a_race_retries_with_another_subnet():
    reg = FakeRegistry()
    env = SubnetEnv(networks=["10.244.0.0/16"], subnet="10.244.77.1/24", mtu=1450, ipmasq=False)
    reg.steal_on_create["10.244.77.0-24"] = attrs("192.168.1.99").dump_json()
    own = manager(reg).acquire(attrs("192.168.1.10"), previous=env)
    assert str(own.subnet) != "10.244.77.0/24"
    assert "192.168.1.99" in reg.kv["10.244.77.0-24"][0]


def test_a_full_network_says_out_of_subnets():
    config = load_network_config('{"Network": "10.0.0.0/28", "SubnetLen": 30}')
    reg = FakeRegistry()
    for i in range(3):
        manager(reg, config=config, seed=i).acquire(attrs(f"192.168.1.{i + 1}"))
    with pytest.raises(LeaseError, match="out of subnets"):
        manager(reg, config=config).acquire(attrs("192.168.1.50"))


def test_random_pick_stays_within_the_first_100_free_subnets():
    leases = list(parse_leases([KeyValue(f"10.244.{i}.0-24", attrs(f"10.0.0.{i}").dump_json().encode(), 1, 1)
                                for i in range(1, 11)]).values())
    picks = {pick_free_subnet(CONFIG, leases, random.Random(s)).subnet for s in range(300)}
    thirds = sorted(int(p.network_address.packed[2]) for p in picks)
    assert thirds[0] >= 11 and thirds[-1] <= 110 and len(picks) > 50


def test_dual_stack_leases_carry_both_subnets_and_the_key_joins_them():
    reg = FakeRegistry()
    own = manager(reg, config=DUAL).acquire(attrs("192.168.1.10", v6="fd00::10"))
    assert own.ipv6_subnet is not None and own.ipv6_subnet.prefixlen == 64
    assert own.key == f"{own.subnet.network_address}-24&{own.ipv6_subnet.network_address}-64"
    assert '"PublicIPv6":"fd00::10"' in reg.kv[own.key][0]
    assert fits_config(own, DUAL) and not fits_config(own, CONFIG)


def test_previous_subnet_ignores_an_env_from_another_network():
    env = SubnetEnv(networks=["10.1.0.0/16"], subnet="10.1.5.1/24", mtu=1450, ipmasq=False)
    assert previous_subnet(CONFIG, env, []) is None


def test_renewal_puts_the_same_value_on_a_new_lease_and_revokes_the_old():
    now = [1000.0]
    reg = FakeRegistry()
    mgr = manager(reg, ttl=100, margin=60, clock=lambda: now[0])
    own = mgr.acquire(attrs("192.168.1.10"))
    first_id = mgr.lease_id
    assert mgr.renew_delay() == 40.0  # expiry - margin
    now[0] += 40
    renewed = mgr.renew()
    assert renewed.subnet == own.subnet and mgr.lease_id != first_id
    assert reg.kv[own.key][1] == mgr.lease_id and first_id in reg.revoked
    assert renewed.expiration == 1140.0


def test_a_ttl_shorter_than_the_margin_renews_at_half_time():
    mgr = manager(FakeRegistry(), ttl=10, margin=3600)
    mgr.acquire(attrs("192.168.1.10"))
    assert mgr.renew_delay() == 5.0


def test_a_revoked_lease_is_taken_back_with_the_same_subnet():
    reg = FakeRegistry()
    mgr = manager(reg)
    own = mgr.acquire(attrs("192.168.1.10"))
    del reg.kv[own.key]  # revoked or expired
    back = mgr.ensure_held()
    assert back.subnet == own.subnet and own.key in reg.kv
    del reg.kv[own.key]
    assert mgr.renew().subnet == own.subnet  # renewal finds it gone too: same answer


def test_a_subnet_taken_by_another_node_is_lost_and_a_new_one_acquired():
    reg = FakeRegistry()
    mgr = manager(reg)
    own = mgr.acquire(attrs("192.168.1.10"))
    reg.kv[own.key] = (attrs("192.168.1.99").dump_json(), 7)
    with pytest.raises(LeaseLostError, match=r"now leased to 192\.168\.1\.99"):
        mgr.ensure_held()
    with pytest.raises(LeaseLostError):
        mgr.renew()
    new = mgr.reacquire()
    assert new.subnet != own.subnet and mgr.own == new
    assert "192.168.1.99" in reg.kv[own.key][0] and "192.168.1.10" in reg.kv[new.key][0]


def test_our_key_rewritten_by_hand_with_our_public_ip_is_adopted_back():
    reg = FakeRegistry()
    mgr = manager(reg)
    own = mgr.acquire(attrs("192.168.1.10"))
    reg.kv[own.key] = (attrs("192.168.1.10", mac="aa:00:00:00:00:09").dump_json(), 0)  # etcdctl put
    mgr.ensure_held()
    assert "aa:bb:cc:00:00:01" in reg.kv[own.key][0]


def test_our_key_put_by_another_daemon_with_our_public_ip_is_left_to_it(tmp_path):
    reg = FakeRegistry()
    ours = manager(reg, state_dir=str(tmp_path / "a"))
    own = ours.acquire(attrs("192.168.1.10"))
    theirs = manager(reg, state_dir=str(tmp_path / "b")).acquire(
        attrs("192.168.1.10", mac="aa:00:00:00:00:09"))
    assert theirs.key == own.key  # no record of its own: it takes the key, as flannel would
    taken = reg.kv[own.key]
    with pytest.raises(DuplicateHolderError, match="two daemons share one public IP"):
        ours.ensure_held()
    with pytest.raises(DuplicateHolderError):
        ours.renew()  # the compare on our etcd lease fails: no overwrite of the other's put
    assert reg.kv[own.key] == taken
    restarted = manager(reg, state_dir=str(tmp_path / "a"))
    with pytest.raises(DuplicateHolderError):  # its record names another etcd lease
        restarted.acquire(attrs("192.168.1.10"))
    assert reg.kv[own.key] == taken


def test_a_restart_reuses_the_key_it_recorded_even_after_a_crash_mid_renewal(tmp_path):
    reg = FakeRegistry()
    mgr = manager(reg, state_dir=str(tmp_path))
    own = mgr.acquire(attrs("192.168.1.10"))
    mgr._grant_recorded(own.key)  # a renewal's new lease recorded, then SIGKILL before the put
    assert manager(reg, state_dir=str(tmp_path)).acquire(attrs("192.168.1.10")).key == own.key
    next_id = reg.next_id + 1  # the put happened before the crash: the key carries the new ID
    mgr2 = manager(reg, state_dir=str(tmp_path))
    mgr2._grant_recorded(own.key, reg.kv[own.key][1])
    reg.kv[own.key] = (reg.kv[own.key][0], next_id)
    assert manager(reg, state_dir=str(tmp_path)).acquire(attrs("192.168.1.10")).key == own.key


def test_ipv6_only_networks_are_refused_clearly():
    config = load_network_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48"}')
    with pytest.raises(LeaseError, match="IPv6-only"):
        manager(FakeRegistry(), config=config)


def test_a_hostile_lease_covering_the_network_does_not_block_acquisition():
    # found by tests/netns/test_daemon_hostile_leases.py: "out of subnets", the daemon exited
    reg = FakeRegistry()
    reg.kv["10.0.0.0-8"] = (attrs("192.168.1.66").dump_json(), 5)
    reg.kv["10.244.0.0-16"] = (attrs("192.168.1.67").dump_json(), 6)
    own = manager(reg).acquire(attrs("192.168.1.10"))
    assert own.subnet.prefixlen == 24 and own.subnet.subnet_of(ipaddress.ip_network("10.244.0.0/16"))
