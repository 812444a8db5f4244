"""The health mesh: this node pings every peer on a small, fixed budget.

Each peer gets an ICMP echo to its VTEP address (`<subnet>.0`, through the tunnel) for
vxlan, or to its public IP for host-gw; a peer is reachable while its last echo came
back within TIMEOUT. The budget is a rate, not a round: at most `rate` echoes a second
(default 20) and no peer more often than every `interval` seconds (default 10). A node
sends the same few echoes a second whether the cluster has 10 nodes or 5000; at 5000 a
full round takes 5000 / 20 = 250 s, so a broken pair shows within about four minutes,
and each node answers about 20 echoes a second from the others.

Exported: `/metrics` gauges peers_probed and peers_unreachable, peer_unreachable{peer}
only for the unreachable ones (a series per peer per node would be 25 million series at
5000 nodes), an RTT summary; `flannelette status` gets a "reachable" column.
One raw ICMP socket (the daemon is root), one thread.
"""
from __future__ import annotations

import heapq
import logging
import operator
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from conf.flannel import Lease

log = logging.getLogger("flanneletted.mesh")

TIMEOUT = 1.0  # seconds an echo may take
TICK = 0.05
_ECHO = struct.Struct("!BBHHH")  # type, code, checksum, id, seq
ECHO_REQUEST, ECHO_REPLY = 8, 0


@dataclass(slots=True)
class PeerHealth:
    target: str
    reachable: Optional[bool] = None  # None: not probed yet
    rtt: float = 0.0
    last_probe: float = float("-inf")


def probe_target(lease: Lease) -> str:
    """The VTEP address for vxlan (the tunnel itself is probed), else the public IP."""
    if lease.attrs.backend_type == "vxlan":
        return str(lease.subnet.network_address)
    return str(lease.attrs.public_ip)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"flannelette-mesh") -> bytes:
    head = _ECHO.pack(ECHO_REQUEST, 0, 0, ident, seq)
    return _ECHO.pack(ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


class Schedule:
    """Which peers to probe now: oldest first, at most `rate` a second, none twice within
    `interval`. Pure (the clock is passed in), so tests run it without sockets.

    Called 20 times a second: the peers wait in a heap of (last probe, key), rebuilt only
    when their number differs from the one it knows or after reset(); the caller tells it of
    a peer added or replaced (add, pushed without a rebuild) or removed (discard; its entry
    leaves the heap as it surfaces), so a call costs the few peers it
    returns, not a sort or a copy of the whole cluster's keys. The caller sets last_probe = now on the
    peers returned; an entry that disagrees with its peer is corrected when it surfaces."""

    def __init__(self, rate: float, interval: float):
        self.rate, self.interval = rate, interval
        self._credit = 0.0
        self._last = None
        self._heap: list[tuple[float, str]] = []
        self._size: Optional[int] = None  # len(peers) the heap stands for

    def reset(self) -> None:
        """Peers were added or replaced: rebuild the heap at the next call."""
        self._size = None

    def add(self, key: str, last_probe: float, new: bool) -> None:
        """One peer came (`new`) or was replaced: queue it without rebuilding the heap."""
        if self._size is None or len(self._heap) > 2 * self._size + 16:
            self._size = None  # stale entries of replaced peers piled up: rebuild
            return
        heapq.heappush(self._heap, (last_probe, key))
        self._size += new

    def discard(self) -> None:
        """One peer went: its heap entry is dropped when it surfaces."""
        if self._size is not None:
            self._size -= 1

    def due(self, peers: dict[str, PeerHealth], now: float) -> list[str]:
        if self._last is not None:
            self._credit = min(self._credit + (now - self._last) * self.rate, max(self.rate, 1.0))
        else:
            self._credit = 1.0
        self._last = now
        if self._size != len(peers):
            self._heap = [(p.last_probe, key) for key, p in peers.items()]
            heapq.heapify(self._heap)
            self._size = len(peers)
        heap, out = self._heap, []
        while heap and len(out) < int(self._credit):
            last, key = heap[0]
            peer = peers.get(key)
            if peer is None:
                heapq.heappop(heap)
            elif peer.last_probe != last:
                heapq.heapreplace(heap, (peer.last_probe, key))
            elif now - last < self.interval:
                break
            else:
                out.append(key)
                heapq.heapreplace(heap, (now, key))  # the caller probes it now
        self._credit -= len(out)
        return out


class HealthMesh:
    def __init__(self, peers: Callable[[], list[Lease]], own: Callable[[], Optional[Lease]],
                 metrics, rate: float = 20.0, interval: float = 10.0):
        self._peers_of, self._own, self.metrics = peers, own, metrics
        self.schedule = Schedule(rate, interval)
        self.health: dict[str, PeerHealth] = {}  # subnet -> state
        self._pending: dict[int, tuple[str, float]] = {}  # seq -> (subnet, sent at)
        self._seq = 0
        self._ident = os.getpid() & 0xFFFF
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._synced: tuple[Optional[Lease], list[Lease]] = (None, [])  # what _sync_peers saw
        self._spelled: dict[int, tuple[Lease, str, str]] = {}  # id -> (lease, subnet, target)
        self._probed = self._unreachable = 0  # peers answered or not, kept as states change
        self._changed: set[str] = set()  # subnets whose state changed since the last export

    def start(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as e:  # not root: no mesh, everything else runs
            log.error("no health mesh: cannot open an ICMP socket error=%s", e)
            self.metrics.inc("errors_total", where="mesh")
            return
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="health-mesh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def reachable(self, lease: Lease) -> Optional[bool]:
        with self._lock:
            peer = self.health.get(str(lease.subnet))
            return peer.reachable if peer else None

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self._round(time.monotonic())
            except Exception:  # a bug here must not stop the mesh for good
                log.exception("health mesh round failed")
                self.metrics.inc("errors_total", where="mesh")

    def _round(self, now: float) -> None:
        self._sync_peers()
        self._receive()
        with self._lock:
            due = self.schedule.due(self.health, now)
            for subnet in due:
                self._send(subnet, now)
            for seq, (subnet, sent) in list(self._pending.items()):
                if now - sent > TIMEOUT:
                    del self._pending[seq]
                    self._mark(subnet, False)
        self._export()

    def _sync_peers(self) -> None:
        own, leases = self._own(), self._peers_of()
        last_own, last = self._synced
        if own is last_own and len(leases) == len(last) and all(map(operator.is_, leases, last)):
            return  # the same lease objects as last round (the watcher replaces a changed one)
        self._synced = (own, leases)
        if own is not last_own or not self._spelled:
            self._resync(own, leases)
            return
        # the same own lease: only the leases that came, went or were replaced are looked
        # at, so a lease change costs its own peer, not a pass over the whole cluster
        # an entry holds its lease, so no other live object has its id: equal ids, same lease
        spelled, current = self._spelled, dict(zip(map(id, leases), leases))
        gone = [spelled.pop(i)[1] for i in spelled.keys() - current.keys()]
        came = {}
        for i in current.keys() - spelled.keys():
            lease = current[i]
            entry = spelled[i] = (lease, str(lease.subnet), probe_target(lease))
            came[entry[1]] = entry[2]
        own_subnet = str(own.subnet) if own is not None else None
        came.pop(own_subnet, None)
        with self._lock:
            for subnet in gone:
                if subnet not in came and subnet in self.health:
                    self._drop(subnet)
            self._add(came)

    def _resync(self, own: Optional[Lease], leases: list[Lease]) -> None:
        """Match the peer set with `leases` in full (at the start, or when our lease moved)."""
        spelled, fresh = self._spelled, {}
        for lease in leases:  # each lease spelled out once: str() of 5000 subnets is slow
            entry = spelled.get(id(lease))
            if entry is None or entry[0] is not lease:
                entry = (lease, str(lease.subnet), probe_target(lease))
            fresh[id(lease)] = entry
        self._spelled = fresh
        own_subnet = str(own.subnet) if own is not None else None
        wanted = {subnet: target for _, subnet, target in fresh.values() if subnet != own_subnet}
        with self._lock:
            for subnet in set(self.health) - set(wanted):
                self._drop(subnet)
            self._add(wanted)

    def _drop(self, subnet: str) -> None:
        self._count(self.health.pop(subnet).reachable, -1)
        self.schedule.discard()
        self._changed.discard(subnet)
        self.metrics.set("peer_unreachable", 0, peer=subnet)

    def _add(self, wanted: dict[str, str]) -> None:
        """Probe these peers (subnet -> target); a known one only if its target changed."""
        for subnet, target in wanted.items():
            peer = self.health.get(subnet)
            if peer is None or peer.target != target:
                if peer is not None:
                    self._count(peer.reachable, -1)
                    self._changed.add(subnet)
                new = peer is None
                peer = self.health[subnet] = PeerHealth(target)
                self.schedule.add(subnet, peer.last_probe, new)

    def _count(self, state: Optional[bool], sign: int) -> None:
        self._probed += sign * (state is not None)
        self._unreachable += sign * (state is False)

    def _send(self, subnet: str, now: float) -> None:
        peer = self.health[subnet]
        self._seq = (self._seq + 1) & 0xFFFF
        peer.last_probe = now
        try:
            self._sock.sendto(echo_request(self._ident, self._seq), (peer.target, 0))
        except OSError:  # no route, unreachable: an answer in itself
            self._mark(subnet, False)
            return
        self._pending[self._seq] = (subnet, now)

    def _receive(self) -> None:
        while select.select([self._sock], [], [], 0)[0]:
            try:
                packet = self._sock.recv(2048)
            except BlockingIOError:
                return
            header = (packet[0] & 0x0F) * 4  # raw IPv4 sockets deliver the IP header
            if len(packet) < header + _ECHO.size:
                continue
            kind, _code, _sum, ident, seq = _ECHO.unpack_from(packet, header)
            if kind != ECHO_REPLY or ident != self._ident:
                continue
            with self._lock:
                sent = self._pending.pop(seq, None)
                if sent is None:
                    continue
                subnet, at = sent
                peer = self.health.get(subnet)
                if peer is not None:
                    peer.rtt = time.monotonic() - at
                    self._mark(subnet, True)
                    self.metrics.observe("peer_rtt_seconds", peer.rtt)

    def _mark(self, subnet: str, ok: bool) -> None:
        peer = self.health.get(subnet)
        if peer is None:
            return
        if peer.reachable is not None and peer.reachable != ok:
            log.warning("peer %s subnet=%s target=%s", "reachable again" if ok else "unreachable",
                        subnet, peer.target)
        if peer.reachable is not ok:
            self._count(peer.reachable, -1)
            self._count(ok, 1)
            self._changed.add(subnet)
        peer.reachable = ok

    def _export(self) -> None:
        """The gauges; peer_unreachable of the peers whose state changed since the last
        export (a series exists only for a peer that was unreachable once)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            states = {s: self.health[s].reachable for s in changed if s in self.health}
            probed, unreachable = self._probed, self._unreachable
        self.metrics.set("peers_probed", probed)
        self.metrics.set("peers_unreachable", unreachable)
        for subnet, ok in states.items():
            if ok is False or self.metrics.get("peer_unreachable", peer=subnet):
                self.metrics.set("peer_unreachable", 1 if ok is False else 0, peer=subnet)
