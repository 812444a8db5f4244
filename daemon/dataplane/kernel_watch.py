"""Listen to rtnetlink and wake the reconcile loop when our objects are touched.

The events our own reconcile causes must not wake it again, or the loop would
chase its tail: an event matters only when it moves the kernel away from the
last plan (a wanted entry deleted or changed, a foreign entry on our device, our
device gone or down, its address removed). Route and neighbour events that our
own requests caused carry our socket's port and are skipped unparsed, and while
a reconcile runs the watch waits and reads the backlog afterwards: a join of
5000 peers emits 15000 events, and taking them one by one meanwhile would steal
the GIL from the reconcile. A lost-event overflow (ENOBUFS) is treated as
"something changed".
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import TYPE_CHECKING, Callable

from cni_plugin import netlink as nl
from cni_plugin.netlink import Fdb, Neigh, NetlinkSocket, Route

if TYPE_CHECKING:
    from daemon.dataplane.backend import KernelBackend

log = logging.getLogger(__name__)

GROUPS = (nl.GRP_LINK | nl.GRP_NEIGH | nl.GRP_IPV4_IFADDR | nl.GRP_IPV6_IFADDR
          | nl.GRP_IPV4_ROUTE | nl.GRP_IPV6_ROUTE)


class KernelWatch(threading.Thread):
    def __init__(self, backend: KernelBackend, callback: Callable[[], None]):
        super().__init__(name="kernel-watch", daemon=True)
        self.backend, self.callback = backend, callback
        self.sock = NetlinkSocket(groups=GROUPS, rcvbuf=64 << 20)  # created here: in the caller's netns
        self.sock.sock.settimeout(0.5)  # wake up now and then to notice stop()
        self.own_port = backend.netlink_port
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    buf = self.sock.recv()
                except socket.timeout:
                    continue
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    log.info("kernel event queue overflowed; reconciling to be sure")
                    self.callback()
                    continue
                self.backend.wait_while_reconciling()  # read a reconcile's echoes after it
                reason = self.first_reason(buf)
                if reason:
                    log.info("kernel change: %s", reason)
                    self.callback()
        except Exception:  # the daemon's periodic tick still repairs; say why we stopped
            log.exception("kernel watch stopped")
        finally:
            self.sock.close()

    def first_reason(self, buf: bytes) -> str:
        for mtype, _flags, _seq, off, end in nl.iter_messages(buf):
            if nl.sender_port(buf, off) == self.own_port:
                continue
            why = self.why(mtype, buf, off, end)
            if why:
                return why
        return ""

    def why(self, mtype: int, buf: bytes, off: int, end: int) -> str:
        applied = self.backend.applied_plan()
        if applied is None:
            return ""
        devs, wanted = applied
        if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
            link = nl.parse_link(buf, off, end)
            index, name = link.index, link.name
            ours = name in devs.vteps or name == devs.uplink or index in devs.by_index
            if not ours:
                return ""
            if mtype == nl.RTM_DELLINK:
                return f"link {name} deleted"
            if devs.by_name.get(name) != index:
                return f"link {name} recreated with index {index}"
            if nl.link_changed(buf, off) & nl.IFF_UP:  # down (repair it) or back up (host-gw routes were flushed)
                return f"link {name} went {'up' if link.up else 'down'}"
            return ""
        if mtype == nl.RTM_DELADDR:
            index = nl.parse_address(buf, off, end).index
            return f"address removed from {devs.name(index)}" if devs.name(index) in devs.vteps else ""
        if mtype in (nl.RTM_NEWNEIGH, nl.RTM_DELNEIGH):
            n = nl.parse_neigh(buf, off, end)
            dev = devs.by_index.get(n.ifindex)
            if isinstance(n, Fdb):
                if dev not in devs.vteps or not n.dst or not n.mac:
                    return ""
                obj, want, permanent = Fdb(dev, n.mac, n.dst), wanted.fdbs.get((dev, n.mac)), True
            else:
                if dev not in devs.vteps or not n.ip:
                    return ""
                if not n.mac:  # `ip neigh del` of a permanent entry: NEW then DEL, FAILED, no lladdr
                    want = wanted.neighs.get((dev, n.ip))
                    return f"wanted {_show(want)} deleted" if want is not None else ""
                obj, want = Neigh(dev, n.ip, n.mac), wanted.neighs.get((dev, n.ip))
                permanent = n.state & nl.NUD_PERMANENT
            return _judge(mtype == nl.RTM_DELNEIGH, obj, want, permanent)
        if mtype in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
            r = nl.parse_route(buf, off, end)
            if r.table != nl.RT_TABLE_MAIN or r.protocol == nl.RTPROT_KERNEL:
                return ""
            obj = Route(r.dst, r.gateway, devs.name(r.oif), r.onlink)
            want = wanted.routes.get(r.dst)
            if want is None and obj.dev not in devs.vteps:
                return ""
            return _judge(mtype == nl.RTM_DELROUTE, obj, want, True)
        return ""


def _judge(deleted: bool, obj, want, permanent) -> str:
    """Does this event move the kernel away from the plan?"""
    if deleted:
        return f"wanted {_show(obj)} deleted" if obj == want else ""
    if want is None:
        return f"foreign {_show(obj)} on our device" if permanent else ""
    if obj != want or not permanent:
        return f"{_show(obj)} differs from the plan"
    return ""


def _show(obj) -> str:
    shown = obj[:4] if isinstance(obj, Route) else obj[:3]  # what the plan names, not the kernel's extras
    return type(obj).__name__.lower() + " " + " ".join(str(v) for v in shown)
