"""The seam between the allocator and where reservations live.

The shape follows host-local's seven-method store: a lock held for a whole
operation, an exclusive `reserve`, the round-robin hint `last_reserved_ip`, and
release/lookup by address or by attachment. `list_all` serves GC.
"""
from __future__ import annotations

import ipaddress
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Optional, Protocol

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Reservation:
    """One held address. `ifname` is "" for host-local files older than v0.8.0
    (container id only); `container_id` is "" when the file is empty or garbled."""

    ip: IPAddr
    container_id: str
    ifname: str

    def belongs_to(self, container_id: str, ifname: str) -> bool:
        """host-local's match: id + ifname, or id alone for a legacy file."""
        if not self.container_id or self.container_id != container_id:
            return False
        return self.ifname == ifname or self.ifname == ""


class Store(Protocol):
    def locked(self) -> AbstractContextManager[None]:
        """Exclusive access for one whole operation (every other call runs inside it)."""

    def reserve(self, container_id: str, ifname: str, ip: IPAddr, range_id: int) -> bool:
        """Claim `ip`; False when it is already held. Records it as range set
        `range_id`'s last reserved address."""

    def last_reserved_ip(self, range_id: int) -> Optional[IPAddr]:
        """The round-robin hint for range set `range_id`, None when unknown."""

    def release(self, ip: IPAddr) -> None:
        """Drop the reservation of `ip`; no error when there is none."""

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        """Drop every reservation of the attachment; returns what was released."""

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        """Addresses held by the attachment, in address order."""

    def list_all(self) -> list[Reservation]:
        """Every reservation, in address order."""


def ip_sort_key(ip: IPAddr) -> tuple[int, int]:
    return ip.version, int(ip)
