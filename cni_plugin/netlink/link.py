"""Links: one type (Link), one parser, the requests that make and change them."""
from __future__ import annotations

import errno
import socket
from typing import NamedTuple, Optional

from cni_plugin.netlink.codec import (
    BE16, IFINFO, attr, attr_str, attr_text, attr_u32, attr_u32_at, iter_attrs, mac_bytes,
    message, nested, pton,
)
from cni_plugin.netlink.constants import (
    BRIDGE_MODE_HAIRPIN, IFF_UP, IFLA_ADDRESS, IFLA_BRPORT_MODE, IFLA_EXT_MASK, IFLA_IFNAME,
    IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA, IFLA_INFO_SLAVE_KIND, IFLA_LINK,
    IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU, IFLA_NET_NS_FD, NLM_F_NEW, NLM_F_REQUEST,
    RTEXT_FILTER_SKIP_STATS, RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, VETH_INFO_PEER, VXLAN_GBP,
    VXLAN_ID, VXLAN_LEARNING, VXLAN_LINK, VXLAN_LOCAL, VXLAN_LOCAL6, VXLAN_PORT, VXLAN_UDP_CSUM,
)
from cni_plugin.netlink.nlsocket import NetlinkError, NetlinkSocket


class Vxlan(NamedTuple):
    """A VXLAN link's settings; None where the kernel did not report the attribute."""
    vni: Optional[int]
    link: Optional[int]  # the uplink's index
    local: str  # "" when unset
    port: Optional[int]
    learning: bool
    gbp: bool
    udp_csum: Optional[bool] = None  # outer UDP checksums on transmit (IPv4 underlay); None: kernel default


class Link(NamedTuple):
    index: int
    name: str
    flags: int = 0  # IFF_*
    mtu: int = 0
    mac: str = ""
    kind: str = ""  # "" for a link without IFLA_LINKINFO (e.g. a physical NIC)
    master: int = 0  # the bridge a port is enslaved to
    peer_index: int = 0  # IFLA_LINK: for a veth, the peer's index in the peer's netns
    vxlan: Optional[Vxlan] = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


# ---------------------------------------------------------------- parsing


def _parse_vxlan(buf, off: int, end: int) -> Vxlan:
    v = {VXLAN_LEARNING: False, VXLAN_GBP: False}
    for atype, voff, vlen in iter_attrs(buf, off, end):
        if atype in (VXLAN_ID, VXLAN_LINK) and vlen >= 4:
            v[atype] = attr_u32_at(buf, voff)
        elif atype == VXLAN_LOCAL and vlen == 4:
            v[atype] = socket.inet_ntop(socket.AF_INET, bytes(buf[voff:voff + 4]))
        elif atype == VXLAN_LOCAL6 and vlen == 16:
            v[atype] = socket.inet_ntop(socket.AF_INET6, bytes(buf[voff:voff + 16]))
        elif atype == VXLAN_PORT and vlen >= 2:
            v[atype] = BE16.unpack_from(buf, voff)[0]
        elif atype == VXLAN_LEARNING and vlen >= 1:
            v[atype] = bool(buf[voff])
        elif atype == VXLAN_UDP_CSUM and vlen >= 1:
            v[atype] = bool(buf[voff])
        elif atype == VXLAN_GBP:
            v[atype] = True
    return Vxlan(v.get(VXLAN_ID), v.get(VXLAN_LINK), v.get(VXLAN_LOCAL) or v.get(VXLAN_LOCAL6, ""),
                 v.get(VXLAN_PORT), v[VXLAN_LEARNING], v[VXLAN_GBP], v.get(VXLAN_UDP_CSUM))


def parse_link(buf, off: int, end: int) -> Link:
    """An RTM_*LINK payload (an answer, a dumped link or a notification)."""
    _family, _type, index, flags, _change = IFINFO.unpack_from(buf, off)
    name, mtu, mac, kind, master, peer, vxlan = "", 0, "", "", 0, 0, None
    for atype, voff, vlen in iter_attrs(buf, off + IFINFO.size, end):
        if atype == IFLA_IFNAME:
            name = attr_text(buf, voff, vlen)
        elif atype == IFLA_MTU:
            mtu = attr_u32_at(buf, voff)
        elif atype == IFLA_ADDRESS:
            mac = bytes(buf[voff:voff + vlen]).hex(":")
        elif atype == IFLA_MASTER:
            master = attr_u32_at(buf, voff)
        elif atype == IFLA_LINK:
            peer = attr_u32_at(buf, voff)
        elif atype == IFLA_LINKINFO:
            data = None
            for itype, ioff, ilen in iter_attrs(buf, voff, voff + vlen):
                if itype == IFLA_INFO_KIND:
                    kind = attr_text(buf, ioff, ilen)
                elif itype == IFLA_INFO_DATA:
                    data = (ioff, ioff + ilen)
            if kind == "vxlan" and data:
                vxlan = _parse_vxlan(buf, *data)
    return Link(index, name, flags, mtu, mac, kind, master, peer, vxlan)


def link_changed(buf, off: int) -> int:
    """The IFF_* flags an RTM_NEWLINK notification says changed (ifi_change)."""
    return IFINFO.unpack_from(buf, off)[4]


# ---------------------------------------------------------------- requests


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFO.pack(0, 0, index, flags, change)


def link_message(link: Link, mtype: int = RTM_NEWLINK, flags: int = NLM_F_NEW) -> bytes:
    """A link as a message: by default the request creating it (kind and vxlan settings
    included); also what the kernel answers for it. IFF_UP in `link.flags` brings it up."""
    body = _ifinfo(link.index, link.flags, link.flags & IFF_UP)
    if link.name:
        body += attr_str(IFLA_IFNAME, link.name)
    if link.mac:
        body += attr(IFLA_ADDRESS, mac_bytes(link.mac))
    if link.mtu:
        body += attr_u32(IFLA_MTU, link.mtu)
    if link.master:
        body += attr_u32(IFLA_MASTER, link.master)
    if link.peer_index:
        body += attr_u32(IFLA_LINK, link.peer_index)
    if link.kind:
        info = [attr_str(IFLA_INFO_KIND, link.kind)]
        if link.vxlan is not None:
            info.append(nested(IFLA_INFO_DATA, *_vxlan_attrs(link.vxlan)))
        body += nested(IFLA_LINKINFO, *info)
    return message(mtype, flags, body)


def _vxlan_attrs(v: Vxlan) -> list[bytes]:
    out = [attr_u32(VXLAN_ID, v.vni or 0), attr_u32(VXLAN_LINK, v.link or 0)]
    if v.local:
        family, packed = pton(v.local)
        out.append(attr(VXLAN_LOCAL if family == socket.AF_INET else VXLAN_LOCAL6, packed))
    if v.port is not None:
        out.append(attr(VXLAN_PORT, BE16.pack(v.port)))
    out.append(attr(VXLAN_LEARNING, bytes([int(v.learning)])))
    if v.udp_csum is not None:
        out.append(attr(VXLAN_UDP_CSUM, bytes([int(v.udp_csum)])))
    if v.gbp:
        out.append(attr(VXLAN_GBP, b""))
    return out


def link_get(name: str = "", index: int = 0) -> bytes:
    body = _ifinfo(index) + (attr_str(IFLA_IFNAME, name) if name else b"")
    return message(RTM_GETLINK, NLM_F_REQUEST, body + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def link_set(index: int, up: bool = False, mtu: int = 0, mac: str = "") -> bytes:
    """Bring the link up and/or set its MTU or MAC (only what is given)."""
    flags = IFF_UP if up else 0
    body = _ifinfo(index, flags, flags)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    if mac:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    return message(RTM_NEWLINK, NLM_F_REQUEST, body)


def link_delete(name: str = "", index: int = 0) -> bytes:
    return message(RTM_DELLINK, NLM_F_REQUEST, _ifinfo(index) + (attr_str(IFLA_IFNAME, name) if name else b""))


def veth_create(host_name: str, host_mac: str, ifname: str, pod_fd: int, pod_mac: str, mtu: int,
                master: int) -> bytes:
    """The host end on `master` and up; the pod end born in the netns of `pod_fd` as `ifname`."""
    # The pod end cannot be born up (veth_open refuses before the pair is linked: ENOTCONN).
    peer = (_ifinfo() + attr_str(IFLA_IFNAME, ifname) + attr_u32(IFLA_NET_NS_FD, pod_fd)
            + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, mac_bytes(pod_mac)))
    body = (_ifinfo(0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, host_name) + attr_u32(IFLA_MTU, mtu)
            + attr(IFLA_ADDRESS, mac_bytes(host_mac)) + attr_u32(IFLA_MASTER, master)
            + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                     nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer))))
    return message(RTM_NEWLINK, NLM_F_NEW, body)


def hairpin_on(port_name: str) -> bytes:
    """`ip link set <port_name> type bridge_slave hairpin on`, addressed by name."""
    body = _ifinfo() + attr_str(IFLA_IFNAME, port_name) + nested(
        IFLA_LINKINFO, attr_str(IFLA_INFO_SLAVE_KIND, "bridge"),
        nested(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, bytes([BRIDGE_MODE_HAIRPIN]))))
    return message(RTM_NEWLINK, NLM_F_REQUEST, body)


# ---------------------------------------------------------------- calls


def checked(sock: NetlinkSocket, request: bytes) -> list:
    """Send one request; its answered objects, or its refusal raised as NetlinkError."""
    reply = sock.request([request])[0]
    if reply.code:
        raise reply.error()
    return reply.objects


def get_link(sock: NetlinkSocket, name: str = "", index: int = 0) -> Optional[Link]:
    """The link called `name` (or with `index`), None if there is none."""
    if len(name.encode()) >= 16:  # longer than IFNAMSIZ: no such link (it may be an address)
        return None
    try:
        objects = checked(sock, link_get(name, index))
    except NetlinkError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return parse_link(*objects[0]) if objects else None


def all_links(sock: NetlinkSocket) -> list[Link]:
    return [parse_link(*o) for o in sock.dump(RTM_GETLINK, _ifinfo())]


def add_link(sock: NetlinkSocket, link: Link) -> None:
    """Create `link` (create only: EEXIST when the name is taken)."""
    checked(sock, link_message(link))


def delete_link(sock: NetlinkSocket, name: str = "", index: int = 0) -> None:
    checked(sock, link_delete(name, index))


def set_link(sock: NetlinkSocket, index: int, *, up: bool = False, mtu: int = 0, mac: str = "") -> None:
    """Bring the link up and/or set its MTU or MAC (only what is given)."""
    checked(sock, link_set(index, up, mtu, mac))
