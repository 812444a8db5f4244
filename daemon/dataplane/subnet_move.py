"""When this node's subnet changes: the operator's line and the bridge's gateway.

A node returning after its lease expired may find its subnet leased to another node
(flannel #1289, #1343); a running node may see the same when its lease was revoked and
someone else took the subnet. It must then stop using the old subnet: the daemon takes a
new one, rewrites subnet.env, and moves cni0's gateway to the new subnet, so the plugin's
next ADD finds the gateway it expects (not error 102) and no route to the old subnet is
left pointing into this node's bridge while another node owns it. Pods still holding an
old-subnet address are not reachable from the cluster any more: they must be deleted or
restarted (their CNI DEL still works), which the warning says.
"""
from __future__ import annotations

import ipaddress
import logging
import socket

from cni_plugin import netlink as nl

log = logging.getLogger("flanneletted")


def subnet_moved_message(old, new, why: str, bridge: str) -> str:
    """The one WARNING line: old and new subnet, why, and what the operator must do."""
    where = f" and {bridge}'s gateway" if bridge else ""
    return (f"this node's subnet moved from {old} to {new}: {why}. subnet.env{where} now use "
            f"{new}; pods still holding {old} addresses are no longer routed: delete or restart "
            "them (kubectl delete pod, or restart their sandboxes) so they get new addresses")


def bridge_gateways(subnets, networks) -> dict[int, tuple]:
    """family -> (gateway interface, cluster network) for each subnet given (v4, v6 or None)."""
    out = {}
    for subnet, network in zip(subnets, networks):
        if subnet is None or network is None:
            continue
        family = socket.AF_INET if subnet.version == 4 else socket.AF_INET6
        gateway = ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        out[family] = (gateway, ipaddress.ip_network(network))
    return out


def move_bridge_gateway(bridge: str, gateways: dict) -> list[str]:
    """On `bridge` (when it exists), drop every address inside the cluster network that is
    not the new gateway and add the new gateway; returns what was removed, as text."""
    if not bridge:
        return []
    sock = nl.NetlinkSocket()
    try:
        link = nl.get_link(sock, name=bridge)
        if link is None or link.kind != "bridge":
            return []
        removed = []
        for family, (gateway, network) in gateways.items():
            have = False
            for a in nl.addresses(sock, family, link.index):
                addr = ipaddress.ip_interface(f"{a.address}/{a.prefixlen}")
                if addr == gateway:
                    have = True
                elif addr.ip in network:
                    nl.delete_address(sock, link.index, a.address, a.prefixlen)
                    removed.append(str(addr))
            if not have:
                nl.add_address(sock, link.index, str(gateway.ip), gateway.network.prefixlen)
        return removed
    finally:
        sock.close()


def follow_new_subnet(config, bridge: str, old, own, why: str) -> None:
    """Say that the subnet moved (WARNING) and move `bridge`'s gateway along."""
    log.warning(subnet_moved_message(old, own.subnet, why, bridge))
    gateways = bridge_gateways((own.subnet if config.enable_ipv4 else None, own.ipv6_subnet),
                               (config.network if config.enable_ipv4 else None,
                                config.ipv6_network))
    removed = move_bridge_gateway(bridge, gateways)
    if removed:
        log.info("moved bridge gateway bridge=%s removed=%s", bridge, ",".join(removed))


def why_not_previous(listing, old_subnet) -> str:
    """Why the subnet of the last subnet.env was not taken again, from an acquisition
    listing (revision, kvs, parsed): who holds it now, if anyone."""
    for lease in (listing[2].values() if listing is not None else ()):
        if lease.subnet == old_subnet:
            return f"{old_subnet} is leased to {lease.attrs.public_ip} now"
    return f"{old_subnet} could not be taken again (outside the network config, or in use)"
