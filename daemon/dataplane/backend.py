"""The Backend contract, the KernelBackend the vxlan and host-gw backends share, and
the data plane's error.

A backend turns the set of leases into kernel objects. KernelBackend does it
level-triggered: each `reconcile(own, leases)` recomputes the whole plan
(daemon.dataplane.planner), reads what the kernel holds (daemon.dataplane.kernel) and
applies the difference with replace semantics (a run for lease changes alone compares with
what the last run applied instead, while the kernel watch vouches for it), so hand-deleted entries or a deleted
VXLAN device come back on the next call. `watch_kernel` calls back when someone
touches our objects, so the daemon does not have to wait for its periodic tick.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import operator
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Protocol

from conf.flannel import Lease, LeaseAttrs, NetworkConfig
from cni_plugin.netlink import NetlinkSocket
from daemon.dataplane import kernel
from daemon.dataplane.planner import (HOST_GW, Memo, Plan, Topology, diff, diff_since, ip_text,
                                      lease_key, plan)

if TYPE_CHECKING:
    from daemon.dataplane.node import NodeInfo

log = logging.getLogger(__name__)


class DataplaneError(Exception):
    """A data plane problem the operator must fix (bad interface, unsupported backend)."""


@dataclass
class ReconcileStats:
    wanted: int = 0  # kernel objects the plan asks for
    unchanged: int = 0
    set: int = 0  # replaced or created
    removed: int = 0
    errors: int = 0
    refused: int = 0  # leases we cannot program (host-gw peer not on-link, bad VtepMAC, ...)
    recreated: list[str] = field(default_factory=list)  # devices that had vanished


class KernelWatchHandle(Protocol):
    def stop(self) -> None: ...


class Backend(Protocol):
    """What the daemon asks of a data plane backend (vxlan, host-gw, alloc).

    Given: the network config, the node (daemon.dataplane.node.NodeInfo: uplink, public
    IPs, MTU) and a state directory of its own; `backends.make_backend` builds one.
    Called, in this order: prepare, configure(own), then reconcile(own, peers) for as
    long as the daemon runs (configure again when the subnet moves), close at the end.
    May assume:
    - every call runs in the network namespace of the process that built it;
    - reconcile runs on one thread, never two at once; prepare and configure run on
      the main thread, configure also while reconciles run (when our subnet moves);
    - programmed() is called from any thread (the status report), so it only reads;
    - reconcile gets the whole wanted state each time (every peer but us), not a delta,
      and may be called with the same leases again at any time (the periodic tick);
    - nothing is torn down at the end: close() leaves devices and routes in place, so
      a restart loses no packet.
    """

    mtu: int  # the pods' MTU, written to subnet.env

    # prepare and configure raise DataplaneError for what the operator must fix: the
    # daemon stops with that one line

    def prepare(self) -> LeaseAttrs:
        """Set up what the lease value describes (a VTEP and its MAC) and return it."""

    def configure(self, own: Lease) -> None:
        """Give our devices their addresses for `own`, our (new) lease."""

    def reconcile(self, own: Lease, leases: list[Lease], read_kernel: bool = True) -> ReconcileStats:
        """Bring the kernel in line with `leases`; a peer that fails is counted, not raised.
        read_kernel=False: only leases changed since the last call (the backend may trust
        what that call left in the kernel, if it can tell nothing else touched it)."""

    def programmed(self, lease: Lease) -> bool:
        """Whether every object for `lease` was in the kernel after the last reconcile."""

    def watch_kernel(self, callback: Callable[[], None]) -> Optional[KernelWatchHandle]:
        """Call `callback()` from a thread of its own when our kernel objects are touched;
        None when there is nothing to watch."""

    def close(self) -> None:
        """Release sockets; the kernel objects stay."""


class AppliedPlan(NamedTuple):
    """What the last reconcile planned, on which devices (the kernel watch compares with it)."""
    devices: kernel.Devices
    plan: Plan


class KernelBackend:
    """The Backend that programs the kernel: the reconcile machinery vxlan and host-gw
    share. A subclass supplies the topology, its devices and the lease attrs."""

    def __init__(self, netconf: NetworkConfig, node: NodeInfo, state_dir: str):
        self.netconf, self.node, self.state_dir = netconf, node, state_dir
        self.mtu = node.iface_mtu
        self._sock = NetlinkSocket()  # opened here: it stays in this netns
        self._lock = threading.Lock()  # one user of the socket at a time
        self._applied: Optional[AppliedPlan] = None
        self._plan_inputs: Optional[tuple] = None  # what self._applied.plan was planned from
        self._memo = Memo()
        self._left: Optional[tuple] = None  # (devices, plan, own lease) of a run applied in full
        self._kernel_watch = None
        self._programmed: tuple[dict, set[str]] = ({}, set())  # (planned leases, unprogrammed)
        self._refused_logged: dict[str, str] = {}
        self.networks = tuple(n for n in (netconf.network if netconf.enable_ipv4 else None,
                                          netconf.ipv6_network if netconf.enable_ipv6 else None)
                              if n is not None)

    # -------------------------------------------------- subclass hooks
    def prepare(self) -> LeaseAttrs:
        raise NotImplementedError

    def _configure(self, own: Lease) -> None:
        """Give our devices their addresses for `own`; nothing to do by default."""

    def _topology(self) -> Topology:
        raise NotImplementedError

    def _ensure_devices(self, own: Optional[Lease]) -> tuple[kernel.Devices, list[str]]:
        """(devices, names recreated because they had vanished or were wrong)."""
        raise NotImplementedError

    # -------------------------------------------------- the contract
    def configure(self, own: Lease) -> None:
        with self._lock:  # a subnet move calls it while the reconcile thread runs
            self._configure(own)

    def reconcile(self, own: Optional[Lease], leases: list[Lease],
                  read_kernel: bool = True) -> ReconcileStats:
        """With read_kernel=False (only leases changed since the last run) the kernel is taken
        to hold what the last run left there, if that run applied everything for the same own
        lease and the kernel watch is alive to report any other change (a device or entry
        touched wakes a run that reads it all): neither the devices are checked nor every
        object dumped, and only the leases whose objects changed are compared."""
        with self._lock, _no_cyclic_gc():
            left, self._left = self._left, None
            trusted = (not read_kernel and left is not None and left[2] is own
                       and self._kernel_watch is not None and self._kernel_watch.is_alive())
            devs, recreated = (left[0], []) if trusted else self._ensure_devices(own)
            topo = self._topology()
            connected: set[str] = set()
            if topo.backend == HOST_GW or topo.direct_routing:
                connected = kernel.directly_connected(
                    self._sock, _peer_ips(own, leases, topo), self.node.iface_index)
            wanted = self._plan(own, leases, topo, connected)
            self._applied = AppliedPlan(devs, wanted)  # before applying: the watch compares with it
            if trusted:
                changes = diff_since(wanted, left[1], devs.owned)
            else:
                current = kernel.read_state(self._sock, devs, topo.ipv4, topo.ipv6)
                changes = diff(wanted, current, devs.owned)
            result = kernel.apply(self._sock, changes, devs)
            stats = self._account(wanted, changes, result, recreated)
            if not result.failed:
                self._left = (devs, wanted, own)
            return stats

    def programmed(self, lease: Lease) -> bool:
        planned, unprogrammed = self._programmed
        key = lease_key(lease)
        return key in planned and key not in unprogrammed

    def watch_kernel(self, callback: Callable[[], None]) -> KernelWatchHandle:
        from daemon.dataplane.kernel_watch import KernelWatch
        watcher = KernelWatch(self, callback)
        watcher.start()
        self._kernel_watch = watcher
        return watcher

    def close(self) -> None:
        self._sock.close()

    # -------------------------------------------------- what the kernel watch reads
    @property
    def netlink_port(self) -> int:
        """Our socket's netlink port: events our own requests caused carry it."""
        return self._sock.port

    def wait_while_reconciling(self) -> None:
        """Return once no reconcile (or configure) is running."""
        with self._lock:
            pass

    def applied_plan(self) -> Optional[AppliedPlan]:
        """The devices and the plan of the last reconcile; None before the first."""
        return self._applied

    # -------------------------------------------------- helpers
    def _plan(self, own: Optional[Lease], leases: list[Lease], topo: Topology,
               connected: set[str]) -> Plan:
        """The last plan again when nothing it depends on changed, as on most ticks:
        building a second 15000-object plan next to the live one was most of a tick's
        memory peak. Leases are compared by identity (the watcher replaces a changed one)."""
        inputs = (own, topo, frozenset(connected))
        last, applied = self._plan_inputs, self._applied
        if (applied is not None and last is not None and last[0] == inputs
                and len(last[1]) == len(leases) and all(map(operator.is_, last[1], leases))):
            return applied.plan
        wanted = plan(own, leases, topo, connected, self._memo)
        self._plan_inputs = (inputs, list(leases))
        return wanted

    def _account(self, wanted: Plan, changes, result: kernel.ApplyResult,
                 recreated: list[str]) -> ReconcileStats:
        failed = {obj for obj, _ in result.failed}
        for obj, err in result.failed[:10]:
            log.warning("could not program %s: %s", _describe(obj), err)
        if len(result.failed) > 10:
            log.warning("... and %d more kernel errors", len(result.failed) - 10)
        # programmed(): planned, not refused, and none of its objects failed
        unprogrammed = set(wanted.refused)
        if failed:
            unprogrammed.update(key for key, objs in wanted.by_lease.items()
                                if any(o in failed for o in objs))
        self._programmed = (wanted.by_lease, unprogrammed)
        for key, why in wanted.refused.items():
            if self._refused_logged.get(key) != why:
                log.warning("refusing peer: %s", why)
        self._refused_logged = dict(wanted.refused)
        removed = len(changes.del_routes) + len(changes.del_fdbs) + len(changes.del_neighs)
        return ReconcileStats(
            wanted=wanted.size, unchanged=changes.unchanged,
            set=len(changes.set_neighs) + len(changes.set_fdbs) + len(changes.set_routes),
            removed=removed, errors=len(result.failed), refused=len(wanted.refused),
            recreated=recreated)

    def _advertised_ipv6(self) -> Optional[str]:
        """PublicIPv6 goes into the lease only with EnableIPv6 (null otherwise, as flannel)."""
        return self.node.public_ipv6 if self.netconf.enable_ipv6 else None


@contextlib.contextmanager
def _no_cyclic_gc():
    """Pause the cycle collector for one reconcile.

    A reconcile allocates some 100k acyclic objects (tuples, strings), freed by
    reference counting; left on, the collector walks every live object of the
    daemon several times per run, which cost a third of a 5000-lease join.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _peer_ips(own: Optional[Lease], leases: list[Lease], topo: Topology) -> list[str]:
    ips = set()
    for lease in leases:
        if own is not None and lease.subnet == own.subnet:
            continue
        if topo.ipv4:
            ips.add(ip_text(lease.attrs.public_ip))
        if topo.ipv6 and lease.attrs.public_ipv6 is not None:
            ips.add(ip_text(lease.attrs.public_ipv6))
    return sorted(ips)


def _describe(obj) -> str:
    name = type(obj).__name__.lower()
    return f"{name} " + " ".join(f"{k}={v}" for k, v in obj._asdict().items())
