"""Kernel objects of one pod attachment: cni0, the veth pair, pod addresses and routes.

Each function does one netlink job (cni_plugin/netlink) and translates kernel
refusals into CNI errors at this seam. `node_sock` is a request socket in the node
netns, `pod_sock` one bound to the pod netns (see podns.py). Requests that belong
together go out in one datagram.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import threading
from typing import Optional

from conf.cni import Route as CniRoute
from conf.errors import BridgeAddressError, CniError, InterfaceExistsError

from cni_plugin import netlink as nl
from cni_plugin.netlink import IFF_UP, Link, NetlinkSocket

IPIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NetlinkStepError(CniError):
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


def _checked(step: str, reply: nl.Reply, tolerated: tuple[int, ...] = ()) -> nl.Reply:
    if reply.code and reply.code not in tolerated:
        raise NetlinkStepError(f"{step}: {reply.error().strerror}")
    return reply


def _run(sock: NetlinkSocket, steps: list[tuple[str, bytes, tuple[int, ...]]]) -> list[nl.Reply]:
    """Send the steps in one datagram; the first refusal (in order) is raised."""
    if not steps:
        return []
    replies = sock.request([msg for _s, msg, _t in steps])
    for (step, _msg, tolerated), reply in zip(steps, replies):
        _checked(step, reply, tolerated)
    return replies


def _address_add(index: int, addr: IPIface) -> bytes:
    return nl.address_add(index, str(addr.ip), addr.network.prefixlen)


# ---------------------------------------------------------------- lookups


def get_link(sock: NetlinkSocket, name: str) -> Optional[Link]:
    try:
        return nl.get_link(sock, name)
    except nl.NetlinkError as e:
        raise NetlinkStepError(f"looking up link {name}: {e.strerror}") from None


def link_addresses(sock: NetlinkSocket, index: int) -> list[IPIface]:
    return [a.interface for a in nl.addresses(sock, index=index)]


def pod_routes(pod_sock: NetlinkSocket, index: int) -> list[tuple[ipaddress._BaseNetwork, str]]:
    """(dst, gateway) of the main-table routes through interface `index`."""
    return [(ipaddress.ip_network(r.dst), r.gateway)
            for family in (nl.AF_INET, nl.AF_INET6) for r in nl.routes(pod_sock, family)
            if r.oif == index and r.table == nl.RT_TABLE_MAIN]


# ---------------------------------------------------------------- cni0


def _bridge_mismatch(bridge: str, have: IPIface, want: IPIface) -> BridgeAddressError:
    return BridgeAddressError(
        f"{bridge} already has an IP address {have} different from {want} that this node's "
        "subnet.env wants: the node's flannel lease changed (kubeadm reset, a new cluster, an "
        "expired lease) while the old bridge stayed",
        f"drain the pods of this node, run `ip link delete {bridge}`, then restart the pods; "
        "flannelette recreates the bridge with the new gateway address",
    )


def _create_bridge(node_sock: NetlinkSocket, name: str) -> None:
    # No MTU here: an MTU given at creation is not "set by user" for the bridge driver,
    # which then resets it to 1500 when the last port leaves. ensure_bridge sets it after.
    request = nl.link_message(Link(0, name, IFF_UP, mac=random_mac(), kind="bridge"))
    # EEXIST: a concurrent ADD made it first
    _run(node_sock, [(f"creating bridge {name}", request, (errno.EEXIST,))])


def ensure_bridge(node_sock: NetlinkSocket, name: str, mtu: int, gateways: list[IPIface]) -> Link:
    """cni0 exists, is up, has `mtu` and exactly our gateway address per family."""
    link = get_link(node_sock, name)
    if link is None:
        _create_bridge(node_sock, name)
        link = get_link(node_sock, name)
        if link is None:
            raise NetlinkStepError(f"bridge {name} vanished right after it was created")
    elif link.kind != "bridge":
        raise BridgeAddressError(f"{name} exists and is a {link.kind or 'non-bridge'} link, not a bridge",
                                 f"remove it with `ip link delete {name}` or set another `bridge` name")
    have = link_addresses(node_sock, link.index)
    steps: list[tuple[str, bytes, tuple[int, ...]]] = []
    for want in gateways:
        same_family = [a for a in have if a.version == want.version and not a.is_link_local]
        for a in same_family:
            if a != want:
                raise _bridge_mismatch(name, a, want)
        if want not in same_family:
            steps.append((f"adding gateway {want} to {name}", _address_add(link.index, want), (errno.EEXIST,)))
    if link.mtu != mtu:  # through ndo_change_mtu, so the kernel keeps it when ports come and go
        steps.append((f"setting MTU {mtu} on {name}", nl.link_set(link.index, mtu=mtu), ()))
    if not link.up:
        steps.append((f"bringing {name} up", nl.link_set(link.index, up=True), ()))
    _run(node_sock, steps)
    return link


# ---------------------------------------------------------------- veth


def check_pod_ifname_free(node_sock: NetlinkSocket, pod_sock: NetlinkSocket, ifname: str,
                          host_name: str, netns: str) -> None:
    """Refuse when the pod already has `ifname` and it is not the pod end of our own veth."""
    pod_link = get_link(pod_sock, ifname)
    if pod_link is None:
        return
    host = get_link(node_sock, host_name)
    ours = (host is not None and pod_link.kind == "veth"
            and host.peer_index == pod_link.index and pod_link.peer_index == host.index)
    if not ours:
        raise InterfaceExistsError(
            f"interface {ifname} already exists in {netns or 'the pod netns'} and was not created "
            "by flannelette for this container")


def setup_veth(node_sock: NetlinkSocket, host_name: str, ifname: str, pod_fd: int, mtu: int,
               bridge: Link, hairpin: bool, pod_mac: Optional[str] = None) -> tuple[Link, str]:
    """One request: the host end on the bridge and up, the pod end born in the pod netns as
    `ifname`; hairpin follows in the same datagram.

    The pod end is born with `pod_mac` (a runtime's requested MAC) or a random one.
    Returns the host end and the pod end's MAC. A leftover of an earlier attempt by the
    same container (same derived name) is removed and the request sent again.
    """
    pod_mac, host_mac = pod_mac or random_mac(), random_mac()
    requests = [nl.veth_create(host_name, host_mac, ifname, pod_fd, pod_mac, mtu, bridge.index)]
    if hairpin:
        requests.append(nl.hairpin_on(host_name))
    for attempt in (1, 2):
        replies = node_sock.request(requests)
        created = replies[0]
        if created.code == errno.EEXIST and attempt == 1 and delete_link(node_sock, host_name):
            continue
        if created.code == errno.EEXIST:
            raise InterfaceExistsError(
                f"cannot create veth {host_name}/{ifname}: a link with one of these names exists")
        _checked(f"creating veth {host_name} with peer {ifname} in the pod", created)
        if hairpin:
            _checked(f"turning hairpin mode on for {host_name}", replies[1])
        break
    return Link(0, host_name, IFF_UP, mtu, host_mac, "veth", bridge.index), pod_mac


def delete_link(node_sock: NetlinkSocket, name: str) -> bool:
    """Remove a link if present (a veth takes its peer with it); True when one was removed."""
    reply = node_sock.request([nl.link_delete(name)])[0]
    if reply.code in (errno.ENODEV, errno.ENOENT):
        return False
    _checked(f"deleting {name}", reply)
    return True


def remove_link(node_sock: NetlinkSocket, name: str, poll: float = 0.0005) -> bool:
    """DEL's removal: returns once `name` has left the namespace, about 1 ms after the request.

    The kernel unlists a veth pair early in RTM_DELLINK and then waits for an RCU barrier
    (~17 ms) before the call returns; that wait runs on a helper thread with its own
    socket, created here so it is in this thread's netns. A refusal is still reported:
    while the link stays listed, this waits for the helper's answer.
    """
    helper_sock = NetlinkSocket(rcvbuf=1 << 16)
    answer: list = []

    def delete() -> None:
        try:
            answer.append(helper_sock.request([nl.link_delete(name)])[0])
        except OSError as e:
            answer.append(nl.Reply(e.errno or errno.EIO, "", []))
        finally:
            helper_sock.close()

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
        if get_link(node_sock, name) is None:
            return True


# ---------------------------------------------------------------- pod side


def configure_pod_iface(pod_sock: NetlinkSocket, ifname: str, addresses: list[IPIface],
                        routes: list[CniRoute]) -> tuple[int, list[CniRoute]]:
    """Addresses, link up, lo up, routes (one datagram).

    Returns the pod interface's index and the routes the pod already had to the same
    destination through another interface (EEXIST): those stay as they are, so a second
    attachment (`net1`) never takes `eth0`'s default or cluster route away.
    """
    link = get_link(pod_sock, ifname)
    if link is None:
        raise NetlinkStepError(f"the pod end {ifname} is missing right after the veth was created")
    steps = [(f"adding {a} to {ifname} in the pod", _address_add(link.index, a), (errno.EEXIST,))
             for a in addresses]
    steps.append((f"bringing {ifname} up in the pod", nl.link_set(link.index, up=True), ()))
    steps.append(("bringing lo up in the pod", nl.link_set(1, up=True), ()))  # lo is index 1 in every netns
    for r in routes:
        dst = ipaddress.ip_network(r.dst)
        request = nl.route_message(nl.Route(f"{dst.network_address}/{dst.prefixlen}", r.gw or "", oif=link.index))
        steps.append((f"adding route {r.dst} via {r.gw or ifname} in the pod", request, (errno.EEXIST,)))
    replies = _run(pod_sock, steps)
    kept = [r for r, reply in zip(routes, replies[len(steps) - len(routes):]) if reply.code == errno.EEXIST]
    return link.index, kept
