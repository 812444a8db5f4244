"""Pure decisions of an ADD: gateways, MTU, pod addresses and routes, the result.

No IO here, so unit tests cover the arithmetic without root.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from conf.cni import IPConfig, Interface, Result, Route
from conf.flannel import SubnetEnv
from conf.plugin import PluginConf

POD_IFACE_INDEX = 2  # interfaces = [bridge, host veth, pod iface]
DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}

IPIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def bridge_gateways(env: SubnetEnv) -> list[IPIface]:
    """cni0's addresses: the first address of FLANNEL_SUBNET's (and FLANNEL_IPV6_SUBNET's) network."""
    out = []
    for subnet in (env.subnet, env.ipv6_subnet):
        if subnet is not None:
            net = subnet.network
            out.append(ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}"))
    return out


def effective_mtu(conf: PluginConf, env: SubnetEnv) -> int:
    return conf.mtu or env.mtu


@dataclass
class PodPlan:
    """What goes into the pod: addresses, routes, and the IPConfigs reported for them."""

    addresses: list[IPIface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


def plan_pod(conf: PluginConf, env: SubnetEnv, ipam: Result) -> PodPlan:
    """Pod addresses from IPAM; routes: IPAM's, one per flannel network, and the default route.

    A route without a gateway goes via the gateway of its family, as the reference
    bridge plugin installs it; we report it with that gateway filled in.
    """
    gateways: dict[int, str] = {}
    for gw in bridge_gateways(env):
        gateways[gw.version] = str(gw.ip)
    plan = PodPlan()
    for ip in ipam.ips:
        iface = ip.interface_address
        gw = ip.gateway or gateways.get(iface.version, "")
        if gw:  # IPAM's own gateway wins for the routes of its family
            gateways[iface.version] = gw
        plan.addresses.append(iface)
        plan.ips.append(IPConfig(address=str(iface), gateway=gw, interface=POD_IFACE_INDEX))
    families = {a.version for a in plan.addresses}
    wanted: list[tuple[str, str]] = []
    for r in ipam.routes:
        version = ipaddress.ip_network(r.dst, strict=False).version
        wanted.append((str(ipaddress.ip_network(r.dst, strict=False)), r.gw or gateways.get(version, "")))
    for net in [*env.networks, *env.ipv6_networks]:
        if net.version in families and gateways.get(net.version):
            wanted.append((str(net), gateways[net.version]))
    if conf.is_default_gateway:
        for version in sorted(families):
            if gateways.get(version):
                wanted.append((DEFAULT_ROUTE[version], gateways[version]))
    seen: set[str] = set()
    for dst, gw in wanted:
        if dst not in seen:
            seen.add(dst)
            plan.routes.append(Route(dst=dst, gw=gw))
    return plan


def build_result(conf: PluginConf, plan: PodPlan, ipam: Result, *, bridge_mac: str, host_veth: str,
                 host_mac: str, ifname: str, pod_mac: str, netns: str, mtu: int) -> Result:
    dns = conf.dns if not conf.dns.is_empty() else ipam.dns
    return Result(
        interfaces=[
            Interface(name=conf.bridge, mac=bridge_mac, mtu=mtu),
            Interface(name=host_veth, mac=host_mac, mtu=mtu),
            Interface(name=ifname, mac=pod_mac, mtu=mtu, sandbox=netns),
        ],
        ips=plan.ips,
        routes=plan.routes,
        dns=dns,
    )
