"""rtnetlink, hand-packed: the one place that builds and reads netlink bytes.

pyroute2 spends 0.2-0.4 ms of Python per message and ~130 ms to import; one
precompiled `struct.pack` per message costs microseconds, dumps are parsed with
`unpack_from` on the receive buffer, and batches go out concatenated
(docs/performance.md). Shared by the plugin's pod attachment (cni_plugin/attachment.py)
and the daemon's devices, data plane, kernel watch and doctor; it imports nothing
beyond the C-backed stdlib.

Public API:
- NetlinkSocket: `request` (each message acknowledged, one Reply each), `batch`
  (ACKs suppressed but the last; the refused messages as Failure), `dump`;
  NetlinkError, an OSError with the kernel's errno and extended-ACK text.
- one type per kernel object, with its parser and requests: Link/Vxlan (link.py),
  Address (address.py), Route (route.py), Neigh and Fdb (neigh.py).
- the numbers (constants.py) and the framing (codec.py: iter_messages, sender_port)
  a notification reader needs.
Naming: `<object>_<verb>(...)` (link_set, route_replace) only builds the message bytes, so
callers can put several into one datagram or batch; `<verb>_<object>(sock, ...)` (set_link,
add_address) sends one request and raises NetlinkError on refusal.
"""
from cni_plugin.netlink.address import (
    Address, add_address, address_add, address_delete, address_message, addresses, delete_address,
    parse_address,
)
from cni_plugin.netlink.codec import iter_messages, sender_port
from cni_plugin.netlink.constants import (
    AF_BRIDGE, AF_INET, AF_INET6, GRP_IPV4_IFADDR, GRP_IPV4_ROUTE, GRP_IPV6_IFADDR, GRP_IPV6_ROUTE,
    GRP_LINK, GRP_NEIGH, IFF_UP, NUD_PERMANENT, RT_TABLE_MAIN, RTM_DELADDR, RTM_DELLINK,
    RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE, RTPROT_BOOT,
    RTPROT_KERNEL,
)
from cni_plugin.netlink.link import (
    Link, Vxlan, add_link, all_links, delete_link, get_link, hairpin_on, link_changed, link_delete,
    link_get, link_message, link_set, parse_link, set_link, veth_create,
)
from cni_plugin.netlink.neigh import (
    Fdb, Neigh, dump_neighbours, fdb_delete, fdb_replace, neigh_delete, neigh_replace, neigh_rows,
    neighbours, parse_neigh,
)
from cni_plugin.netlink.nlsocket import Failure, NetlinkError, NetlinkSocket, Reply
from cni_plugin.netlink.route import (
    Route, lookup_routes, parse_route, route_delete, route_get, route_message, route_replace,
    route_to, routes,
)

__all__ = [
    # the socket
    "NetlinkSocket", "NetlinkError", "Reply", "Failure",
    # links
    "Link", "Vxlan", "parse_link", "link_changed", "link_message", "link_get", "link_set", "link_delete",
    "veth_create", "hairpin_on", "get_link", "all_links", "add_link", "delete_link", "set_link",
    # addresses
    "Address", "parse_address", "address_message", "address_add", "address_delete", "addresses", "add_address",
    "delete_address",
    # routes
    "Route", "parse_route", "route_replace", "route_delete", "route_message", "route_get",
    "routes", "lookup_routes", "route_to",
    # neighbours and FDB entries
    "Neigh", "Fdb", "parse_neigh", "neigh_rows", "neigh_replace", "neigh_delete", "fdb_replace",
    "fdb_delete", "dump_neighbours", "neighbours",
    # notifications
    "iter_messages", "sender_port", "GRP_LINK", "GRP_NEIGH", "GRP_IPV4_IFADDR", "GRP_IPV6_IFADDR",
    "GRP_IPV4_ROUTE", "GRP_IPV6_ROUTE", "RTM_NEWLINK", "RTM_DELLINK", "RTM_DELADDR",
    "RTM_NEWNEIGH", "RTM_DELNEIGH", "RTM_NEWROUTE", "RTM_DELROUTE",
    # numbers the callers compare with
    "AF_INET", "AF_INET6", "AF_BRIDGE", "IFF_UP", "NUD_PERMANENT", "RT_TABLE_MAIN", "RTPROT_BOOT",
    "RTPROT_KERNEL",
]
