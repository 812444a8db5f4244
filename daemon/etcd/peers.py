"""Compact in-memory leases: what the daemon keeps for every node of the cluster.

A conf.flannel.Lease (a pydantic model with a LeaseAttrs model inside) costs about
1.5 KB; 5000 of them were a tenth of the daemon's memory, and parsing them all at
once left their temporaries scattered over the heap. The daemon validates each etcd
value with the pydantic model (one rule, one error text) and keeps a PeerLease:
slots, the same attribute names the planner, the lease manager and the status report
read (`subnet`, `ipv6_subnet`, `attrs.public_ip`, `attrs.backend_data`, `key`, ...),
about 650 bytes.
"""
from __future__ import annotations

import sys
from typing import Any, NamedTuple, Optional

from conf.flannel import Lease, make_subnet_key


class VxlanInfo(NamedTuple):
    """BackendData of a vxlan lease, as conf.flannel.VxlanData reads it."""
    vni: int
    vtep_mac: str


def _vxlan(data: Optional[dict]) -> Optional[VxlanInfo]:
    if not data:
        return None
    return VxlanInfo(int(data.get("VNI", 1)), str(data.get("VtepMAC", "")))


def _interned(data: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Share the key strings ("VNI", "VtepMAC") among all leases."""
    if data is None:
        return None
    return {sys.intern(k): v for k, v in data.items()}


class PeerAttrs:
    """LeaseAttrs without pydantic: read-only by convention."""

    __slots__ = ("public_ip", "public_ipv6", "backend_type", "backend_data", "backend_v6_data")

    def __init__(self, public_ip, public_ipv6, backend_type: str,
                 backend_data: Optional[dict], backend_v6_data: Optional[dict]):
        self.public_ip, self.public_ipv6 = public_ip, public_ipv6
        self.backend_type = sys.intern(backend_type)
        self.backend_data = _interned(backend_data)
        self.backend_v6_data = _interned(backend_v6_data)

    def _fields(self) -> tuple:
        return (self.public_ip, self.public_ipv6, self.backend_type, self.backend_data,
                self.backend_v6_data)

    def __eq__(self, other) -> bool:
        return isinstance(other, PeerAttrs) and self._fields() == other._fields()

    __hash__ = None  # mutable dicts inside

    @property
    def vxlan(self) -> Optional[VxlanInfo]:
        return _vxlan(self.backend_data)


class PeerLease:
    """One node's lease as the daemon keeps it (see the module docstring)."""

    __slots__ = ("subnet", "ipv6_subnet", "attrs", "expiration")

    def __init__(self, subnet, ipv6_subnet, attrs: PeerAttrs, expiration: float = 0.0):
        self.subnet, self.ipv6_subnet = subnet, ipv6_subnet
        self.attrs, self.expiration = attrs, expiration

    @property
    def key(self) -> str:
        return make_subnet_key(self.subnet, self.ipv6_subnet)

    def __eq__(self, other) -> bool:
        return (isinstance(other, PeerLease) and self.subnet == other.subnet
                and self.ipv6_subnet == other.ipv6_subnet and self.attrs == other.attrs
                and self.expiration == other.expiration)

    __hash__ = None

    def __repr__(self) -> str:
        return f"PeerLease({self.key}, public_ip={self.attrs.public_ip})"


def compact(lease: Lease) -> PeerLease:
    """The PeerLease holding the same values as a validated conf.flannel.Lease."""
    a = lease.attrs
    return PeerLease(lease.subnet, lease.ipv6_subnet,
                     PeerAttrs(a.public_ip, a.public_ipv6, a.backend_type, a.backend_data,
                               a.backend_v6_data),
                     lease.expiration)
