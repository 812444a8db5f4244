"""CHECK: compare the kernel's view of one attachment with the prevResult that described it."""
from __future__ import annotations

import ipaddress

from conf.cni import Result
from conf.errors import CheckFailedError

from cni_plugin import attachment
from cni_plugin.netlink import NetlinkSocket


def _fail(msg: str) -> CheckFailedError:
    return CheckFailedError(f"CHECK failed: {msg}")


def verify_attachment(node_sock: NetlinkSocket, pod_sock: NetlinkSocket, prev: Result, *, bridge: str, host_name: str,
                      ifname: str) -> None:
    """Pod iface with prevResult's MAC, addresses and routes; host end a veth on the bridge."""
    indexed = list(enumerate(prev.interfaces))
    pod_entry = next(((i, x) for i, x in indexed if x.name == ifname and x.sandbox), None)
    if pod_entry is None:
        raise _fail(f"prevResult lists no interface {ifname} with a sandbox")
    pod_pos, pod_iface = pod_entry

    pod_link = attachment.get_link(pod_sock, ifname)
    if pod_link is None:
        raise _fail(f"interface {ifname} is missing from the pod netns {pod_iface.sandbox}")
    if pod_iface.mac and pod_link.mac.lower() != pod_iface.mac.lower():
        raise _fail(f"interface {ifname} has MAC {pod_link.mac}, prevResult says {pod_iface.mac}")
    if not pod_link.up:
        raise _fail(f"interface {ifname} in the pod is down")

    br = attachment.get_link(node_sock, bridge)
    if br is None:
        raise _fail(f"bridge {bridge} is missing")
    host = attachment.get_link(node_sock, host_name)
    if host is None:
        raise _fail(f"host end {host_name} of {ifname} is missing")
    if host.master != br.index:
        raise _fail(f"host end {host_name} is not attached to {bridge}")
    if host.peer_index != pod_link.index or pod_link.peer_index != host.index:
        raise _fail(f"{host_name} is not the peer of {ifname} in the pod")

    have = set(attachment.link_addresses(pod_sock, pod_link.index))
    for ip in prev.ips:
        if ip.interface is not None and ip.interface != pod_pos:
            continue
        if ip.interface_address not in have:
            raise _fail(f"address {ip.address} is missing from {ifname}")

    routes = attachment.pod_routes(pod_sock, pod_link.index)
    for r in prev.routes:
        dst = ipaddress.ip_network(r.dst, strict=False)
        if not any(d == dst and (not r.gw or gw == r.gw) for d, gw in routes):
            via = f" via {r.gw}" if r.gw else ""
            raise _fail(f"route {dst}{via} is missing from the pod's {ifname}")
