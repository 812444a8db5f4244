"""Peer leases as the data plane may trust them: what another node (or anyone with write
access to flannel's prefix) stored in etcd is checked before it becomes a route, a
neighbour or an FDB entry. A rejected value carries a reason for the daemon's metric.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Optional

from pydantic import ValidationError

from conf.flannel import Lease, LeaseAttrs, NetworkConfig, net_inside, parse_subnet_key

MAX_LEASE_VALUE = 64 * 1024  # flannel writes about 200 bytes; a bigger value is not a lease
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
MAX_VNI = (1 << 24) - 1


class LeaseRejectedError(ValueError):
    """A value in etcd that must not reach the kernel; `reason` is the metric label."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


_NOT_A_NODE = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "255.255.255.255/32", "::/128")]


def _check_public_ip(ip, name: str) -> None:
    if ip.is_multicast or ip.is_loopback or any(ip in n for n in _NOT_A_NODE if n.version == ip.version):
        raise LeaseRejectedError("public_ip", f"{name} {ip} cannot be a node's address")


def _check_backend_data(data: Optional[dict], name: str) -> None:
    if data is None:
        return
    vni = data.get("VNI", 1)
    if type(vni) is not int or not 0 <= vni <= MAX_VNI:
        raise LeaseRejectedError("bad_field", f"{name}.VNI {str(vni)[:40]!r} is not a VNI (0-{MAX_VNI})")
    if "VtepMAC" not in data:
        return
    mac = data["VtepMAC"]
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise LeaseRejectedError("vtep_mac", f"{name}.VtepMAC {str(mac)[:40]!r} is not a MAC address")
    first = int(mac[:2], 16)
    if first & 1 or mac.replace(":", "").strip("0") == "":
        raise LeaseRejectedError("vtep_mac", f"{name}.VtepMAC {mac} is a multicast or zero MAC, not a VTEP's")


def load_peer_lease(key: str, value: bytes | str, config: Optional[NetworkConfig] = None,
                    expiration: float = 0.0) -> Lease:
    """A lease another node wrote, checked for everything the data plane would trust:
    size, key, JSON and types, public IPs, VXLAN data, and (given the config) the
    check_peer_in_network rules. LeaseRejectedError says why not."""
    if len(value) > MAX_LEASE_VALUE:
        raise LeaseRejectedError("too_large", f"value is {len(value)} bytes, over the {MAX_LEASE_VALUE}-byte limit")
    try:
        v4, v6 = parse_subnet_key(key)
    except ValueError as e:
        raise LeaseRejectedError("bad_key", str(e)) from None
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise LeaseRejectedError("bad_json", f"value is not JSON: {str(e)[:80]}") from None
    for name in ("PublicIP", "PublicIPv6"):  # pydantic would read a number as an address
        if isinstance(raw, dict) and raw.get(name) is not None and not isinstance(raw[name], str):
            raise LeaseRejectedError("bad_field", f"{name} is a {type(raw[name]).__name__}, not an address")
    try:
        attrs = LeaseAttrs.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise LeaseRejectedError("bad_field", f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}") from None
    _check_public_ip(attrs.public_ip, "PublicIP")
    if attrs.public_ipv6 is not None:
        _check_public_ip(attrs.public_ipv6, "PublicIPv6")
    _check_backend_data(attrs.backend_data, "BackendData")
    _check_backend_data(attrs.backend_v6_data, "BackendV6Data")
    lease = Lease(subnet=v4, ipv6_subnet=v6, attrs=attrs, expiration=expiration)
    if config is not None:
        check_peer_in_network(lease, config)
    return lease


def check_peer_in_network(lease, config: NetworkConfig) -> None:
    """A peer's subnets lie inside the Network and its public IPs outside it (a route for
    10.0.0.0/8 via one peer, or a tunnel to a pod address, is not a lease)."""
    for subnet, network in ((lease.subnet, config.network), (lease.ipv6_subnet, config.ipv6_network)):
        # flannel's subnets are at least 2 bits longer than the Network (NetworkConfig's rule)
        if subnet is not None and network is not None and not (
                net_inside(subnet, network) and subnet.prefixlen >= network.prefixlen + 2):
            raise LeaseRejectedError("outside_network", f"subnet {subnet} is not a subnet of the Network {network}")
    for ip, network in ((lease.attrs.public_ip, config.network), (lease.attrs.public_ipv6, config.ipv6_network)):
        if ip is not None and network is not None and ip in network:
            raise LeaseRejectedError("public_ip", f"public IP {ip} is inside the pod network {network}")
