"""This node's subnet lease: acquire, renew, take back; flanneld's rules, without its exits.

Acquire (flannel's tryAcquireLease, up to 10 rounds against racing nodes):
  1. a lease already held by our public IP, if it still fits the config -> reuse it,
     unless another daemon with our public IP put it (daemon.etcd.holder) -> DuplicateHolderError;
  2. else the subnet of an existing subnet.env, if nobody holds it -> take it again;
  3. else a random pick among the first 100 free subnets in [SubnetMin, SubnetMax];
created by a transaction that succeeds only while the key is absent, on a TTL lease.
Renew = fresh TTL lease + put, guarded by compares (our value, our etcd lease) so we
never overwrite another node, nor another daemon that has our public IP.
Revoked or expired -> take the same subnet back; if another node holds it,
LeaseLostError (the daemon then acquires a new subnet: `reacquire`); if another daemon
with our public IP holds it, DuplicateHolderError (that daemon keeps it).
"""
from __future__ import annotations

import bisect
import ipaddress
import itertools
import logging
import random
import threading
import time
from typing import Callable, Iterator, Optional

from conf.flannel import (Lease, LeaseAttrs, NetworkConfig, SubnetEnv, last_address_int, load_lease,
                          make_subnet_key)
from conf.peer_lease import LeaseRejectedError, check_peer_in_network, load_peer_lease
from daemon.etcd.holder import HolderFile, HolderRecord, foreign_holder
from daemon.etcd.peers import PeerLease, compact
from daemon.etcd.registry import KeyValue, Registry, RegistryError

log = logging.getLogger("flanneletted.leases")

RACE_RETRIES = 10
RANDOM_POOL = 100


class LeaseError(Exception):
    """The lease cannot be obtained or kept; str() is the line for the user."""


class LeaseLostError(LeaseError):
    """Our subnet now belongs to another node: pod addresses here would be wrong."""


class DuplicateHolderError(LeaseError):
    """Another daemon with our public IP holds the lease we would take or renew."""


def duplicate_holder_message(key: str, public_ip, lease_id: int) -> str:
    return (f"subnet {key} with our public IP {public_ip} is held by another flanneletted "
            f"(etcd lease {lease_id:x}, not one of ours): two daemons share one public IP "
            "(a cloned VM or a wrong --public-ip); this one leaves the subnet to it. Fix the "
            "node's public IP; if this node is the rightful holder, stop the other daemon")


OnReject = Callable[[str], None]  # called with the reason of each rejected lease


def parse_lease(kv: KeyValue, config: Optional[NetworkConfig] = None,
                on_reject: Optional[OnReject] = None) -> Optional[PeerLease]:
    """A lease from etcd, or None (one log line, `on_reject(reason)`) when someone stored
    something unreadable or hostile (conf.flannel.load_peer_lease).

    Validated by the pydantic model, kept compact (daemon.etcd.peers): one model at a time
    lives, so 5000 leases leave no trail of temporaries behind."""
    try:
        return compact(load_peer_lease(kv.key, kv.value, config))
    except LeaseRejectedError as e:
        _rejected(kv.key, e, on_reject)
        return None


def parse_leases(kvs: list[KeyValue], config: Optional[NetworkConfig] = None,
                 on_reject: Optional[OnReject] = None) -> dict[str, PeerLease]:
    """key -> Lease for every acceptable lease of a listing."""
    return {kv.key: lease for kv in kvs if (lease := parse_lease(kv, config, on_reject)) is not None}


def screen_leases(parsed: dict[str, PeerLease], config: NetworkConfig,
                  on_reject: Optional[OnReject] = None) -> dict[str, PeerLease]:
    """Drop the leases of a listing parsed without the config (acquisition's) that the
    data plane must not program (conf.peer_lease.check_peer_in_network)."""
    out = {}
    for key, lease in parsed.items():
        try:
            check_peer_in_network(lease, config)
        except LeaseRejectedError as e:
            _rejected(key, e, on_reject)
            continue
        out[key] = lease
    return out


def in_network(lease: PeerLease, config: NetworkConfig) -> bool:
    try:
        check_peer_in_network(lease, config)
    except LeaseRejectedError:
        return False
    return True


def _rejected(key: str, e: LeaseRejectedError, on_reject: Optional[OnReject]) -> None:
    log.warning("ignoring lease key=%r reason=%s error=%s", key[:120], e.reason, str(e).splitlines()[0][:200])
    if on_reject is not None:
        on_reject(e.reason)


def fits_config(lease: Lease, config: NetworkConfig) -> bool:
    """flannel's isSubnetConfigCompat: right length, inside [Min, Max], v6 part iff IPv6."""
    if config.enable_ipv4 and not config.subnet_usable(lease.subnet):
        return False
    if config.enable_ipv6:
        v6 = lease.ipv6_subnet
        return (v6 is not None and v6.prefixlen == config.ipv6_subnet_len
                and config.ipv6_subnet_min <= v6.network_address <= config.ipv6_subnet_max)
    return lease.ipv6_subnet is None


def _free(candidates: Iterator, taken: list) -> list:
    """The first RANDOM_POOL candidates overlapping no taken subnet (bisect: 5000 leases are cheap)."""
    spans = sorted((int(t.network_address), last_address_int(t)) for t in taken)
    starts = [lo for lo, _ in spans]
    reach = list(itertools.accumulate((hi for _, hi in spans), max))  # furthest end so far
    out = []
    for net in candidates:
        i = bisect.bisect_right(starts, int(net.broadcast_address))
        if i and reach[i - 1] >= int(net.network_address):
            continue  # some taken subnet starts before our end and reaches our start
        out.append(net)
        if len(out) == RANDOM_POOL:
            break
    return out


def _candidates(network, first, last, length: int) -> Iterator:
    """Every subnet of `length` in network from first to last, lazily (IPv6: up to 2**64)."""
    size = 1 << (network.max_prefixlen - length)
    for addr in range(int(first), int(last) + 1, size):
        yield type(network)((addr, length))


def pick_free_subnet(config: NetworkConfig, leases: list[Lease], rng: random.Random) -> Lease:
    """A random subnet (pair) among the first free ones; only subnets, attrs filled later."""
    v4 = _free(_candidates(config.network, config.subnet_min, config.subnet_max,
                           config.subnet_len), [lease.subnet for lease in leases])
    if not v4:
        raise LeaseError(f"out of subnets: all of {config.subnet_min}..{config.subnet_max} "
                         f"/{config.subnet_len} are leased")
    v6 = None
    if config.enable_ipv6:
        pool = _free(_candidates(config.ipv6_network, config.ipv6_subnet_min,
                                 config.ipv6_subnet_max, config.ipv6_subnet_len),
                     [x.ipv6_subnet for x in leases if x.ipv6_subnet])
        if not pool:
            raise LeaseError("out of IPv6 subnets")
        v6 = rng.choice(pool)
    return Lease(subnet=rng.choice(v4), ipv6_subnet=v6,
                 attrs=LeaseAttrs(PublicIP="0.0.0.0"))


def previous_subnet(config: NetworkConfig, env: Optional[SubnetEnv], leases: list[Lease]) -> Optional[Lease]:
    """The subnet recorded in an old subnet.env, if it fits and nobody holds it."""
    if env is None or env.subnet is None:
        return None
    v6 = env.ipv6_subnet.network if env.ipv6_subnet else None
    candidate = Lease(subnet=env.subnet.network, ipv6_subnet=v6, attrs=LeaseAttrs(PublicIP="0.0.0.0"))
    if not fits_config(candidate, config):
        return None
    for held in leases:
        if held.subnet.overlaps(candidate.subnet) or (
                v6 is not None and held.ipv6_subnet is not None and held.ipv6_subnet.overlaps(v6)):
            return None
    return candidate


class LeaseManager:
    """Holds this node's lease in etcd for as long as the daemon runs."""

    def __init__(self, registry: Registry, config: NetworkConfig, ttl: int, margin: int,
                 rng: Optional[random.Random] = None, clock: Callable[[], float] = time.time,
                 state_dir: str = "", on_reject: Optional[OnReject] = None):
        if not config.enable_ipv4:
            raise LeaseError("IPv6-only networks (EnableIPv4 false) are not supported")
        self.registry, self.config = registry, config
        self.ttl, self.margin = ttl, margin
        self.rng = rng or random.Random()
        self.clock = clock
        self.own: Optional[Lease] = None
        self.lease_id = 0
        self.renew_at = 0.0
        # The last full listing (revision, kvs, parsed): the watcher starts from it.
        self.listing: Optional[tuple[int, list[KeyValue], dict[str, PeerLease]]] = None
        self._value = ""
        self._attrs: Optional[LeaseAttrs] = None
        self.holder = HolderFile(state_dir)
        self._record: Optional[HolderRecord] = None  # as found at start: who we were
        self._lock = threading.Lock()
        self.on_reject = on_reject  # the daemon counts rejected leases

    # ------------------------------------------------------------ acquire

    def acquire(self, attrs: LeaseAttrs, previous: Optional[SubnetEnv] = None) -> Lease:
        self._value, self._attrs = attrs.dump_json(), attrs
        if self.own is None and self._record is None:
            self._record = self.holder.load()
        for _ in range(RACE_RETRIES):
            lease = self._try_acquire(attrs, previous)
            if lease is not None:
                return lease
        raise LeaseError(f"max retries ({RACE_RETRIES}) reached trying to acquire a subnet")

    def _try_acquire(self, attrs: LeaseAttrs, previous: Optional[SubnetEnv]) -> Optional[Lease]:
        revision, kvs = self.registry.list_leases()
        # Without the config: a lease of ours that no longer fits must be seen to be deleted.
        parsed = parse_leases(kvs, on_reject=self.on_reject)
        self.listing = (revision, kvs, parsed)
        by_key = {kv.key: kv for kv in kvs}
        leases = list(parsed.values())
        mine = [x for x in leases if x.attrs.public_ip == attrs.public_ip]
        for lease in mine:
            kv = by_key[lease.key]
            if foreign_holder(self._record, kv.key, kv.lease_id):
                raise DuplicateHolderError(duplicate_holder_message(kv.key, attrs.public_ip,
                                                                    kv.lease_id))
            if fits_config(lease, self.config):
                lease_id, _ = self.registry.renew_lease(
                    lease.key, kv.value.decode(), self._value, self.ttl, held_by=kv.lease_id,
                    lease_id=self._grant_recorded(lease.key, kv.lease_id))
                if lease_id is None:
                    return None  # changed under us: start over
                log.info("reusing lease subnet=%s public_ip=%s", lease.key, attrs.public_ip)
                return self._held(lease.key, lease_id)
            log.info("deleting lease that no longer fits the config subnet=%s", lease.key)
            self.registry.delete_lease(lease.key)
        # A hostile lease (say 10.0.0.0/8) must not make the whole Network look taken.
        # (the watcher logs and counts it)
        leases = [x for x in leases if x.attrs.public_ip != attrs.public_ip and in_network(x, self.config)]
        candidate = previous_subnet(self.config, previous, leases)
        source = "subnet.env"
        if candidate is None:
            candidate, source = pick_free_subnet(self.config, leases, self.rng), "random"
        key = make_subnet_key(candidate.subnet, candidate.ipv6_subnet)
        lease_id = self.registry.create_lease(key, self._value, self.ttl,
                                              lease_id=self._grant_recorded(key))
        if lease_id is None:
            log.info("lost a race for subnet=%s, retrying", key)
            return None
        log.info("acquired lease subnet=%s from=%s public_ip=%s", key, source, attrs.public_ip)
        return self._held(key, lease_id)

    def reacquire(self) -> Lease:
        """A new subnet after LeaseLostError: the lost one is another node's now."""
        assert self._attrs is not None
        return self.acquire(self._attrs)

    def _grant_recorded(self, key: str, *also: int) -> int:
        """A fresh etcd lease for a put on `key`, recorded as ours before the put is tried
        (with `also` and the one we hold on that key: a crash in between loses neither)."""
        lease_id = self.registry.grant(self.ttl)
        held = self.lease_id if self.own is not None and self.own.key == key else 0
        self.holder.save(key, *also, held, lease_id)
        return lease_id

    def _held(self, key: str, lease_id: int) -> Lease:
        self.holder.save(key, lease_id)
        with self._lock:
            self.lease_id = lease_id
            now = self.clock()
            self.own = load_lease(key, self._value, now + self.ttl)
            self.renew_at = now + (self.ttl - self.margin if self.ttl > self.margin else self.ttl / 2)
            return self.own

    # ------------------------------------------------------------ keep

    def renew_delay(self) -> float:
        """Seconds until renewal: expiry - margin (half the TTL when the TTL is shorter)."""
        return max(0.0, self.renew_at - self.clock()) if self.own is not None else 0.0

    def renew(self) -> Lease:
        """New TTL lease + put; takes the subnet back if it vanished meanwhile."""
        assert self.own is not None
        key, old_id = self.own.key, self.lease_id
        lease_id, current = self.registry.renew_lease(key, self._value, self._value, self.ttl,
                                                      held_by=old_id,
                                                      lease_id=self._grant_recorded(key))
        if lease_id is None:
            return self._recover(current)
        log.info("renewed lease subnet=%s ttl=%d", key, self.ttl)
        self.registry.revoke(old_id)  # the old grant would only expire later; keep etcd tidy
        return self._held(key, lease_id)

    def ensure_held(self) -> Lease:
        """Check our key after a watch event about it; take it back if it is gone."""
        assert self.own is not None
        kv = self.registry.get_lease_kv(self.own.key)
        if kv is not None and kv.value.decode() == self._value and kv.lease_id == self.lease_id:
            return self.own
        return self._recover(kv.value if kv is not None else None)

    def _recover(self, current: Optional[bytes]) -> Lease:
        key = self.own.key
        if current is not None:
            holder = _public_ip_of(current)
            if holder != self.own.attrs.public_ip:
                raise LeaseLostError(f"subnet {key} is now leased to {holder or 'another node'}")
            kv = self.registry.get_lease_kv(key)
            if kv is not None:
                if foreign_holder(HolderRecord(key, (self.lease_id,)), key, kv.lease_id):
                    raise DuplicateHolderError(duplicate_holder_message(key, holder, kv.lease_id))
                lease_id, current = self.registry.renew_lease(
                    key, kv.value.decode(), self._value, self.ttl, held_by=kv.lease_id,
                    lease_id=self._grant_recorded(key, kv.lease_id))
                if lease_id is not None:
                    return self._held(key, lease_id)
            if current is not None:
                raise LeaseLostError(f"subnet {key} keeps changing under us")
        log.warning("lease revoked or expired, taking it back subnet=%s", key)
        lease_id = self.registry.create_lease(key, self._value, self.ttl,
                                              lease_id=self._grant_recorded(key))
        if lease_id is None:
            return self._recover(self.registry.get_lease(key) or b"{}")
        log.info("took lease back subnet=%s", key)
        return self._held(key, lease_id)


def _public_ip_of(value: bytes) -> Optional[ipaddress.IPv4Address]:
    try:
        return LeaseAttrs.model_validate_json(value).public_ip
    except ValueError:
        return None


__all__ = ["LeaseManager", "LeaseError", "LeaseLostError", "DuplicateHolderError", "RegistryError",
           "fits_config", "parse_lease", "parse_leases", "pick_free_subnet", "previous_subnet"]
