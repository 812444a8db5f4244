"""Kernel objects of one pod attachment: cni0, the veth pair, pod addresses and routes.

Each function does one netlink job with hand-packed rtnetlink messages (rtnl.py)
and translates kernel errors into CNI errors at this seam. `ipr` is a request
socket in the node netns, `pod` one bound to the pod netns (see podns.py).
Requests that belong together go out in one datagram.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import threading
from dataclasses import dataclass
from typing import Optional

from conf.cni import Route
from conf.errors import BridgeAddressError, CniError, InterfaceExistsError

from cni_plugin import rtnl
from cni_plugin.rtnl import IFF_UP, RtnlSocket, attr, attr_str, attr_u32, message, nested

IFA_F_NODAD = 0x02  # the address is usable at once, no duplicate address detection wait
BRIDGE_MODE_HAIRPIN = 1
AF_INET, AF_INET6 = rtnl.AF_INET, rtnl.AF_INET6

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER, IFLA_BRPORT_MODE = 1, 4
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link lookup needs no counters
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RTPROT_BOOT, RTN_UNICAST = 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
NEW = rtnl.F_REQUEST | rtnl.F_CREATE | rtnl.F_EXCL

IPIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class LinkInfo:
    index: int
    name: str
    mac: str
    kind: str = ""
    master: int = 0
    peer_index: int = 0  # IFLA_LINK: for a veth, the peer's index in the peer's netns
    mtu: int = 0
    up: bool = False


class NetlinkFailure(CniError):
    """A kernel refusal we did not expect; the message names the step."""


def host_veth_name(container_id: str, ifname: str) -> str:
    """A stable name, so a retried ADD or a DEL without saved state finds the same link."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return "veth" + digest[:8]


def random_mac() -> str:
    """Locally administered unicast; set at creation so udev never rewrites it."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return b.hex(":")


def _failed(step: str, reply: rtnl.Reply) -> NetlinkFailure:
    return NetlinkFailure(f"{step}: {reply.error().strerror}")


def _checked(step: str, reply: rtnl.Reply, tolerated: tuple[int, ...] = ()) -> rtnl.Reply:
    if reply.code and reply.code not in tolerated:
        raise _failed(step, reply)
    return reply


# ---------------------------------------------------------------- messages


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = rtnl.AF_UNSPEC) -> bytes:
    return rtnl.IFINFO.pack(family, 0, index, flags, change)


def _link_get(name: str) -> bytes:
    return message(rtnl.RTM_GETLINK, rtnl.F_REQUEST, _ifinfo() + attr_str(IFLA_IFNAME, name)
                   + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def _link_set(index: int, up: bool = False, mtu: int = 0, name: str = "") -> bytes:
    body = _ifinfo(index, IFF_UP if up else 0, IFF_UP if up else 0)
    if name:
        body += attr_str(IFLA_IFNAME, name)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    return message(rtnl.RTM_NEWLINK, rtnl.F_REQUEST, body)


def _addr_add(index: int, addr: IPIface) -> bytes:
    family, raw = rtnl.pton(str(addr.ip))
    prefixlen = addr.network.prefixlen
    body = rtnl.IFADDR.pack(family, prefixlen, IFA_F_NODAD if family == AF_INET6 else 0, 0, index)
    body += attr(IFA_ADDRESS, raw)
    if family == AF_INET:
        body += attr(IFA_LOCAL, raw)
        if prefixlen < 31:  # what `ip addr add ... brd +` and the Go plugins set
            body += attr(IFA_BROADCAST, addr.network.broadcast_address.packed)
    return message(rtnl.RTM_NEWADDR, NEW, body)


def _route_add(oif: int, dst: ipaddress._BaseNetwork, gateway: str) -> bytes:
    """`ip route add`: create only. A route to the same destination and metric that the pod
    already has (another attachment's default or cluster route) is refused with EEXIST,
    never replaced."""
    family = AF_INET6 if dst.version == 6 else AF_INET
    body = rtnl.RTMSG.pack(family, dst.prefixlen, 0, 0, rtnl.RT_TABLE_MAIN, RTPROT_BOOT,
                           RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK, RTN_UNICAST, 0)
    body += attr_u32(RTA_TABLE, rtnl.RT_TABLE_MAIN) + attr_u32(RTA_OIF, oif)
    if dst.prefixlen:
        body += attr(RTA_DST, dst.network_address.packed)
    if gateway:
        body += attr(RTA_GATEWAY, rtnl.pton(gateway)[1])
    return message(rtnl.RTM_NEWROUTE, NEW, body)


def _link_del(name: str) -> bytes:
    return message(rtnl.RTM_DELLINK, rtnl.F_REQUEST, _ifinfo() + attr_str(IFLA_IFNAME, name))


# ---------------------------------------------------------------- lookups


def _parse_link(buf: bytes, off: int, end: int) -> LinkInfo:
    _family, _type, index, flags, _change = rtnl.IFINFO.unpack_from(buf, off)
    link = LinkInfo(index=index, name="", mac="", up=bool(flags & IFF_UP))
    u32 = rtnl._U32.unpack_from
    for atype, voff, vlen in rtnl.iter_attrs(buf, off + rtnl.IFINFO.size, end):
        if atype == IFLA_IFNAME:
            link.name = rtnl.attr_text(buf, voff, vlen)
        elif atype == IFLA_ADDRESS:
            link.mac = bytes(buf[voff:voff + vlen]).hex(":")
        elif atype == IFLA_MTU:
            link.mtu = u32(buf, voff)[0]
        elif atype == IFLA_MASTER:
            link.master = u32(buf, voff)[0]
        elif atype == IFLA_LINK:
            link.peer_index = u32(buf, voff)[0]
        elif atype == IFLA_LINKINFO:
            for itype, ioff, ilen in rtnl.iter_attrs(buf, voff, voff + vlen):
                if itype == IFLA_INFO_KIND:
                    link.kind = rtnl.attr_text(buf, ioff, ilen)
    return link


def get_link(ipr: RtnlSocket, name: str) -> Optional[LinkInfo]:
    reply = ipr.call([_link_get(name)])[0]
    if reply.code == errno.ENODEV:
        return None
    _checked(f"looking up link {name}", reply)
    return _parse_link(*reply.objects[0]) if reply.objects else None


def link_addresses(ipr: RtnlSocket, index: int) -> list[IPIface]:
    out = []
    for buf, off, end in ipr.dump_objects(rtnl.RTM_GETADDR, rtnl.IFADDR.pack(0, 0, 0, 0, index)):
        family, prefixlen, _flags, _scope, ifindex = rtnl.IFADDR.unpack_from(buf, off)
        if ifindex != index:
            continue
        found = {}
        for atype, voff, vlen in rtnl.iter_attrs(buf, off + rtnl.IFADDR.size, end):
            if atype in (IFA_ADDRESS, IFA_LOCAL):
                found[atype] = bytes(buf[voff:voff + vlen])
        raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        if raw:
            out.append(ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen)))
    return out


def pod_routes(pod: RtnlSocket, index: int) -> list[tuple[ipaddress._BaseNetwork, str]]:
    """(dst, gateway) of the main-table routes through interface `index`."""
    out = []
    for family in (AF_INET, AF_INET6):
        for buf, off, end in pod.dump_objects(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _s, _t, table, _p, _sc, _rt, _f = rtnl.RTMSG.unpack_from(buf, off)
            dst, gateway, oif = None, "", 0
            for atype, voff, vlen in rtnl.iter_attrs(buf, off + rtnl.RTMSG.size, end):
                if atype == RTA_DST:
                    dst = ipaddress.ip_address(bytes(buf[voff:voff + vlen]))
                elif atype == RTA_GATEWAY:
                    gateway = str(ipaddress.ip_address(bytes(buf[voff:voff + vlen])))
                elif atype == RTA_OIF:
                    oif = rtnl._U32.unpack_from(buf, voff)[0]
                elif atype == RTA_TABLE:
                    table = rtnl._U32.unpack_from(buf, voff)[0]
            if oif != index or table != rtnl.RT_TABLE_MAIN:
                continue
            if dst is None:
                dst = ipaddress.ip_address(0 if fam == AF_INET else "::")
            out.append((ipaddress.ip_network((dst, dst_len)), gateway))
    return out


# ---------------------------------------------------------------- cni0


def _bridge_mismatch(bridge: str, have: IPIface, want: IPIface) -> BridgeAddressError:
    return BridgeAddressError(
        f"{bridge} already has an IP address {have} different from {want} that this node's "
        "subnet.env wants: the node's flannel lease changed (kubeadm reset, a new cluster, an "
        "expired lease) while the old bridge stayed",
        f"drain the pods of this node, run `ip link delete {bridge}`, then restart the pods; "
        "flannelette recreates the bridge with the new gateway address",
    )


def _create_bridge(ipr: RtnlSocket, name: str) -> None:
    # No IFLA_MTU here: an MTU given at creation is not "set by user" for the bridge driver,
    # which then resets it to 1500 when the last port leaves. ensure_bridge sets it after.
    body = (_ifinfo(0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, name)
            + attr(IFLA_ADDRESS, rtnl.mac_bytes(random_mac())) + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
    # EEXIST: a concurrent ADD made it first
    _checked(f"creating bridge {name}", ipr.call([message(rtnl.RTM_NEWLINK, NEW, body)])[0], (errno.EEXIST,))


def ensure_bridge(ipr: RtnlSocket, name: str, mtu: int, gateways: list[IPIface]) -> LinkInfo:
    """cni0 exists, is up, has `mtu` and exactly our gateway address per family."""
    link = get_link(ipr, name)
    if link is None:
        _create_bridge(ipr, name)
        link = get_link(ipr, name)
        if link is None:
            raise NetlinkFailure(f"bridge {name} vanished right after it was created")
    elif link.kind != "bridge":
        raise BridgeAddressError(f"{name} exists and is a {link.kind or 'non-bridge'} link, not a bridge",
                                 f"remove it with `ip link delete {name}` or set another `bridge` name")
    have = link_addresses(ipr, link.index)
    steps: list[tuple[str, bytes, tuple[int, ...]]] = []
    for want in gateways:
        same_family = [a for a in have if a.version == want.version and not a.is_link_local]
        for a in same_family:
            if a != want:
                raise _bridge_mismatch(name, a, want)
        if want not in same_family:
            steps.append((f"adding gateway {want} to {name}", _addr_add(link.index, want), (errno.EEXIST,)))
    if link.mtu != mtu:  # through ndo_change_mtu, so the kernel keeps it when ports come and go
        steps.append((f"setting MTU {mtu} on {name}", _link_set(link.index, mtu=mtu), ()))
    if not link.up:
        steps.append((f"bringing {name} up", _link_set(link.index, up=True), ()))
    _run(ipr, steps)
    return link


def _run(sock: RtnlSocket, steps: list[tuple[str, bytes, tuple[int, ...]]]) -> None:
    """Send the steps in one datagram; the first failure (in order) is raised."""
    if not steps:
        return
    for (step, _msg, tolerated), reply in zip(steps, sock.call([msg for _s, msg, _t in steps])):
        _checked(step, reply, tolerated)


# ---------------------------------------------------------------- veth


def check_pod_ifname_free(ipr: RtnlSocket, pod: RtnlSocket, ifname: str, host_name: str, netns: str) -> None:
    """Refuse when the pod already has `ifname` and it is not the pod end of our own veth."""
    pod_link = get_link(pod, ifname)
    if pod_link is None:
        return
    host = get_link(ipr, host_name)
    ours = (host is not None and pod_link.kind == "veth"
            and host.peer_index == pod_link.index and pod_link.peer_index == host.index)
    if not ours:
        raise InterfaceExistsError(
            f"interface {ifname} already exists in {netns or 'the pod netns'} and was not created "
            "by flannelette for this container")


def _veth_create(host_name: str, host_mac: str, ifname: str, pod_fd: int, pod_mac: str, mtu: int,
                 master: int) -> bytes:
    # The pod end cannot be born up (veth_open refuses before the pair is linked: ENOTCONN).
    peer = (_ifinfo() + attr_str(IFLA_IFNAME, ifname) + attr_u32(IFLA_NET_NS_FD, pod_fd)
            + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, rtnl.mac_bytes(pod_mac)))
    body = (_ifinfo(0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, host_name) + attr_u32(IFLA_MTU, mtu)
            + attr(IFLA_ADDRESS, rtnl.mac_bytes(host_mac)) + attr_u32(IFLA_MASTER, master)
            + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                     nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer))))
    return message(rtnl.RTM_NEWLINK, NEW, body)


def _hairpin_on(host_name: str) -> bytes:
    """`ip link set <host_name> type bridge_slave hairpin on`, addressed by name."""
    body = _ifinfo() + attr_str(IFLA_IFNAME, host_name) + nested(
        IFLA_LINKINFO, attr_str(IFLA_INFO_SLAVE_KIND, "bridge"),
        nested(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, bytes([BRIDGE_MODE_HAIRPIN]))))
    return message(rtnl.RTM_NEWLINK, rtnl.F_REQUEST, body)


def setup_veth(ipr: RtnlSocket, host_name: str, ifname: str, pod_fd: int, mtu: int,
               bridge: LinkInfo, hairpin: bool, pod_mac: Optional[str] = None) -> tuple[LinkInfo, str]:
    """One request: the host end on the bridge and up, the pod end born in the pod netns as
    `ifname`; hairpin follows in the same datagram.

    The pod end is born with `pod_mac` (a runtime's requested MAC) or a random one.
    Returns the host end and the pod end's MAC. A leftover of an earlier attempt by the
    same container (same derived name) is removed and the request sent again.
    """
    pod_mac, host_mac = pod_mac or random_mac(), random_mac()
    requests = [_veth_create(host_name, host_mac, ifname, pod_fd, pod_mac, mtu, bridge.index)]
    if hairpin:
        requests.append(_hairpin_on(host_name))
    for attempt in (1, 2):
        replies = ipr.call(requests)
        created = replies[0]
        if created.code == errno.EEXIST and attempt == 1 and delete_link(ipr, host_name):
            continue
        if created.code == errno.EEXIST:
            raise InterfaceExistsError(
                f"cannot create veth {host_name}/{ifname}: a link with one of these names exists")
        _checked(f"creating veth {host_name} with peer {ifname} in the pod", created)
        if hairpin:
            _checked(f"turning hairpin mode on for {host_name}", replies[1])
        break
    return LinkInfo(index=0, name=host_name, mac=host_mac, kind="veth", master=bridge.index,
                    mtu=mtu, up=True), pod_mac


def delete_link(ipr: RtnlSocket, name: str) -> bool:
    """Remove a link if present (a veth takes its peer with it); True when one was removed."""
    reply = ipr.call([_link_del(name)])[0]
    if reply.code in (errno.ENODEV, errno.ENOENT):
        return False
    _checked(f"deleting {name}", reply)
    return True


def remove_link(ipr: RtnlSocket, name: str, poll: float = 0.0005) -> bool:
    """DEL's removal: returns once `name` has left the namespace, about 1 ms after the request.

    The kernel unlists a veth pair early in RTM_DELLINK and then waits for an RCU barrier
    (~17 ms) before the call returns; that wait runs on a helper thread with its own
    socket, created here so it is in this thread's netns. A refusal is still reported:
    while the link stays listed, this waits for the helper's answer.
    """
    sock = RtnlSocket(rcvbuf=1 << 16)
    answer: list = []

    def delete() -> None:
        try:
            answer.append(sock.call([_link_del(name)])[0])
        except OSError as e:
            answer.append(rtnl.Reply(e.errno or errno.EIO, "", []))
        finally:
            sock.close()

    helper = threading.Thread(target=delete, name=f"del-{name}", daemon=True)
    helper.start()
    while True:
        helper.join(poll)
        if answer:
            reply = answer[0]
            if reply.code in (errno.ENODEV, errno.ENOENT):
                return False
            _checked(f"deleting {name}", reply)
            return True
        if get_link(ipr, name) is None:
            return True


# ---------------------------------------------------------------- pod side


def configure_pod_iface(pod: RtnlSocket, ifname: str, addresses: list[IPIface],
                        routes: list[Route]) -> tuple[int, list[Route]]:
    """Addresses, link up, lo up, routes (one datagram).

    Returns the pod interface's index and the routes the pod already had to the same
    destination through another interface (EEXIST): those stay as they are, so a second
    attachment (`net1`) never takes `eth0`'s default or cluster route away.
    """
    link = get_link(pod, ifname)
    if link is None:
        raise NetlinkFailure(f"the pod end {ifname} is missing right after the veth was created")
    steps = [(f"adding {a} to {ifname} in the pod", _addr_add(link.index, a), (errno.EEXIST,)) for a in addresses]
    steps.append((f"bringing {ifname} up in the pod", _link_set(link.index, up=True), ()))
    steps.append(("bringing lo up in the pod", _link_set(1, up=True), ()))  # lo is index 1 in every netns
    for r in routes:
        steps.append((f"adding route {r.dst} via {r.gw or ifname} in the pod",
                      _route_add(link.index, ipaddress.ip_network(r.dst), r.gw), (errno.EEXIST,)))
    replies = pod.call([msg for _s, msg, _t in steps])
    for (step, _msg, tolerated), reply in zip(steps, replies):
        _checked(step, reply, tolerated)
    kept = [r for r, reply in zip(routes, replies[len(steps) - len(routes):]) if reply.code == errno.EEXIST]
    return link.index, kept
