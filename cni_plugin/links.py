"""Kernel objects of one pod attachment: cni0, the veth pair, pod addresses and routes.

Each function does one netlink job with pyroute2 and translates kernel errors
into CNI errors at this seam. `ipr` is a handle in the node netns, `pod` one
bound to the pod netns (see podns.py).
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from conf.cni import Route
from conf.errors import BridgeAddressError, CniError, InterfaceExistsError

IFA_F_NODAD = 0x02  # the address is usable at once, no duplicate address detection wait
BRIDGE_MODE_HAIRPIN = 1
AF_INET, AF_INET6 = 2, 10

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
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _failed(step: str, e: NetlinkError) -> NetlinkFailure:
    return NetlinkFailure(f"{step}: {e.args[1] if len(e.args) > 1 else e}")


def _link_info(msg) -> LinkInfo:
    kind = ""
    linkinfo = msg.get("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get("IFLA_INFO_KIND") or ""
    return LinkInfo(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        mac=msg.get("IFLA_ADDRESS") or "",
        kind=kind,
        master=msg.get("IFLA_MASTER") or 0,
        peer_index=msg.get("IFLA_LINK") or 0,
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & 1),
    )


def get_link(ipr: IPRoute, name: str) -> Optional[LinkInfo]:
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise _failed(f"looking up link {name}", e) from None
    return _link_info(msgs[0]) if msgs else None


def link_addresses(ipr: IPRoute, index: int) -> list[IPIface]:
    out = []
    for msg in ipr.addr("dump", index=index):
        addr = msg.get("IFA_ADDRESS")
        if addr:
            out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
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


def ensure_bridge(ipr: IPRoute, name: str, mtu: int, gateways: list[IPIface]) -> LinkInfo:
    """cni0 exists, is up, has `mtu` and exactly our gateway address per family."""
    link = get_link(ipr, name)
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=random_mac(), state="up")
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # a concurrent ADD made it first
                raise _failed(f"creating bridge {name}", e) from None
        link = get_link(ipr, name)
        if link is None:
            raise NetlinkFailure(f"bridge {name} vanished right after it was created")
    elif link.kind != "bridge":
        raise BridgeAddressError(f"{name} exists and is a {link.kind or 'non-bridge'} link, not a bridge",
                                 f"remove it with `ip link delete {name}` or set another `bridge` name")
    have = link_addresses(ipr, link.index)
    for want in gateways:
        same_family = [a for a in have if a.version == want.version and not a.is_link_local]
        for a in same_family:
            if a != want:
                raise _bridge_mismatch(name, a, want)
        if want not in same_family:
            _add_address(ipr, link.index, want, f"adding gateway {want} to {name}")
    if link.mtu != mtu:
        _set(ipr, f"setting MTU {mtu} on {name}", index=link.index, mtu=mtu)
    if not link.up:
        _set(ipr, f"bringing {name} up", index=link.index, state="up")
    return link


def _set(ipr: IPRoute, step: str, **kw) -> None:
    try:
        ipr.link("set", **kw)
    except NetlinkError as e:
        raise _failed(step, e) from None


def _add_address(ipr: IPRoute, index: int, addr: IPIface, step: str) -> None:
    kw = {"flags": IFA_F_NODAD} if addr.version == 6 else {}
    try:
        ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, **kw)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise _failed(step, e) from None


# ---------------------------------------------------------------- veth


def check_pod_ifname_free(ipr: IPRoute, pod: IPRoute, ifname: str, host_name: str, netns: str) -> None:
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


def setup_veth(ipr: IPRoute, host_name: str, ifname: str, pod_fd: int, mtu: int,
               bridge: LinkInfo, hairpin: bool) -> tuple[LinkInfo, str]:
    """One request: the host end on the bridge, the pod end born in the pod netns as `ifname`.

    Returns the host end and the pod end's MAC. A leftover of an earlier attempt by the
    same container (same derived name) is removed and the request sent again.
    """
    pod_mac = random_mac()
    request = dict(ifname=host_name, kind="veth", mtu=mtu, master=bridge.index, state="up",
                   peer={"ifname": ifname, "net_ns_fd": pod_fd, "mtu": mtu, "address": pod_mac})
    for attempt in (1, 2):
        try:
            ipr.link("add", address=random_mac(), **request)
            break
        except NetlinkError as e:
            if e.code == errno.EEXIST and attempt == 1 and delete_link(ipr, host_name):
                continue
            if e.code == errno.EEXIST:
                raise InterfaceExistsError(
                    f"cannot create veth {host_name}/{ifname}: a link with one of these names exists") from None
            raise _failed(f"creating veth {host_name} with peer {ifname} in the pod", e) from None
    host = get_link(ipr, host_name)
    if host is None:
        raise NetlinkFailure(f"veth {host_name} vanished right after it was created")
    if hairpin:
        try:
            ipr.brport("set", index=host.index, mode=BRIDGE_MODE_HAIRPIN)
        except NetlinkError as e:
            raise _failed(f"turning hairpin mode on for {host_name}", e) from None
    return host, pod_mac


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Remove a link if present (a veth takes its peer with it); True when one was removed."""
    try:
        ipr.link("del", ifname=name)
        return True
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise _failed(f"deleting {name}", e) from None


# ---------------------------------------------------------------- pod side


def configure_pod_iface(pod: IPRoute, ifname: str, addresses: list[IPIface], routes: list[Route]) -> int:
    """Addresses, link up, lo up, routes; returns the pod interface's index."""
    link = get_link(pod, ifname)
    if link is None:
        raise NetlinkFailure(f"the pod end {ifname} is missing right after the veth was created")
    for addr in addresses:
        _add_address(pod, link.index, addr, f"adding {addr} to {ifname} in the pod")
    _set(pod, f"bringing {ifname} up in the pod", index=link.index, state="up")
    _set(pod, "bringing lo up in the pod", index=1, state="up")  # lo is index 1 in every netns
    for r in routes:
        dst = ipaddress.ip_network(r.dst)
        kw = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": link.index,
              "family": AF_INET6 if dst.version == 6 else AF_INET}
        if r.gw:
            kw["gateway"] = r.gw
        try:
            pod.route("replace", **kw)
        except NetlinkError as e:
            raise _failed(f"adding route {r.dst} via {r.gw or ifname} in the pod", e) from None
    return link.index


def pod_routes(pod: IPRoute, index: int) -> list[tuple[ipaddress._BaseNetwork, str]]:
    """(dst, gateway) of the main-table routes through interface `index`."""
    out = []
    for family in (AF_INET, AF_INET6):
        for msg in pod.route("dump", family=family, table=254):
            if msg.get("RTA_OIF") != index:
                continue
            dst = msg.get("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
            out.append((ipaddress.ip_network(f"{dst}/{msg['dst_len']}"), msg.get("RTA_GATEWAY") or ""))
    return out
