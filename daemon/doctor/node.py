"""`flannelette doctor` with no path: is this node sound?

Checks, in order: the daemon answers and is ready; this node's lease is in etcd and alive;
subnet.env matches it; every peer's lease is programmed here (the path doctor's own
node-route / vxlan-neighbour / vxlan-fdb checks, once per peer); the masquerade and
forward rules are there when subnet.env says FLANNEL_IPMASQ=true; the IPAM store holds no
reservation of a pod that is gone and its range is not nearly full. Reads only.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from conf.flannel import SubnetEnv
from daemon.doctor import hops
from daemon.doctor.facts import LeaseFacts, PathFacts
from daemon.doctor.hops import Hop, Report

NEARLY_FULL = 0.9  # of the range's usable addresses


@dataclass
class Reservation:
    ip: str
    container_id: str
    ifname: str
    pod_present: bool  # an attachment of the plugin holds it and its netns exists


@dataclass
class NodeFacts:
    env: Optional[SubnetEnv]  # None: subnet.env missing or unreadable
    env_error: str = ""
    daemon_ready: Optional[bool] = None  # None: no answer on the socket
    daemon_error: str = ""
    own: Optional[LeaseFacts] = None  # this node's lease in etcd
    peers: list[LeaseFacts] = field(default_factory=list)
    network: Optional[ipaddress.IPv4Network] = None  # from etcd's network config
    etcd_error: str = ""
    kernel: Optional[PathFacts] = None  # the node's routes, neighbours, FDB, flannel.1 (pod fields unused)
    reservations: list[Reservation] = field(default_factory=list)
    ipam_dir: str = ""


def check_daemon(n: NodeFacts) -> Hop:
    expected = "flanneletted answers on its socket and is ready"
    if n.daemon_ready is None:
        return Hop("daemon", False, expected, f"no answer: {n.daemon_error}",
                   "systemctl start flanneletted (journalctl -u flanneletted says why it stopped)")
    return Hop("daemon", n.daemon_ready, expected, "ready" if n.daemon_ready else "answers, not ready",
               "" if n.daemon_ready else "journalctl -u flanneletted (it is waiting for etcd or its lease)")


def check_lease(n: NodeFacts) -> Hop:
    subnet = n.env.subnet.network if n.env and n.env.subnet else None
    expected = f"a live lease for {subnet or 'this node'} in etcd"
    if n.etcd_error:
        return Hop("lease", False, expected, f"cannot read etcd: {n.etcd_error}",
                   "check --etcd-endpoints and the credentials")
    if n.own is None:
        return Hop("lease", False, expected, f"no lease for {subnet}" if subnet else "no subnet.env to find it by",
                   "restart flanneletted (it takes the lease back)")
    found = f"{n.own.subnet} public IP {n.own.public_ip}, backend {n.own.backend}"
    if n.own.ttl is not None:
        found += f", expires in {n.own.ttl} s" if n.own.ttl > 0 else ", expired"
    ok = n.own.ttl is None or n.own.ttl > 0
    return Hop("lease", ok, expected, found, "" if ok else "restart flanneletted")


def check_subnet_env(n: NodeFacts) -> Hop:
    expected = "subnet.env names this node's lease and the cluster network"
    if n.env is None:
        return Hop("subnet-env", False, expected, n.env_error or "missing", "start flanneletted (it writes subnet.env)")
    found = f"FLANNEL_NETWORK={','.join(map(str, n.env.networks))} FLANNEL_SUBNET={n.env.subnet} FLANNEL_MTU={n.env.mtu}"
    wrong = []
    if n.own is not None and (n.env.subnet is None or n.env.subnet.network != n.own.subnet):
        wrong.append(f"the lease is {n.own.subnet}")
    if n.network is not None and n.network not in n.env.networks:
        wrong.append(f"the network config says {n.network}")
    vtep = n.kernel.vtep if n.kernel else None
    if vtep is not None and vtep.mtu != n.env.mtu:
        wrong.append(f"flannel.1 has MTU {vtep.mtu}")
    return Hop("subnet-env", not wrong, expected, found + ("; but " + ", ".join(wrong) if wrong else ""),
               "restart flanneletted (it rewrites subnet.env)" if wrong else "")


def peer_facts(k: PathFacts, peer: LeaseFacts) -> PathFacts:
    """The node's kernel facts looking at one peer (a path to its first address)."""
    dest = peer.subnet.network_address + 1
    return dataclasses.replace(k, dest=dest, dest_subnet=peer.subnet, lease=peer, notes=[])


def check_peers(n: NodeFacts) -> Hop:
    expected = "every peer's lease programmed here (route; for vxlan neighbour and FDB)"
    if n.kernel is None:
        return Hop("peers", False, expected, "not checked: no usable subnet.env says which subnet is ours",
                   "start flanneletted (it writes subnet.env)")
    broken, fixes = [], []
    for peer in n.peers:
        f = peer_facts(n.kernel, peer)
        for check in (hops.node_route, hops.vxlan_neighbour, hops.vxlan_fdb):
            hop = check(f)
            if hop is not None and not hop.ok:
                broken.append(f"{peer.subnet} ({peer.public_ip}): {hop.name} {hop.found}")
                fixes.append(hop.fix)
                break
    found = f"{len(n.peers) - len(broken)} of {len(n.peers)} peers programmed"
    if broken:
        found += ": " + "; ".join(broken)
    fix = "restart flanneletted (it programs every peer)" if broken and n.daemon_ready is None else "; ".join(fixes)
    return Hop("peers", not broken, expected, found, fix if broken else "")


def check_rules(n: NodeFacts) -> Optional[Hop]:
    if n.env is None or not n.env.ipmasq or n.kernel is None:
        return None
    net = str(n.env.networks[0]) if n.env.networks else ""
    expected = f"flannelette's masquerade (FLANNEL-POSTRTG) and forward (FLANNEL-FWD) rules for {net}"
    have = [b or "iptables" for b, save in sorted(n.kernel.iptables.items())
            if "-j FLANNEL-POSTRTG" in hops._table(save, "nat") and f"-A FLANNEL-FWD -s {net}" in save]
    found = f"present in {', '.join(have)}" if have else "absent from every iptables backend"
    return Hop("rules", bool(have), expected, found, "" if have else "restart flanneletted (--ip-masq adds them)")


def check_ipam(n: NodeFacts) -> Optional[Hop]:
    if n.env is None or n.env.subnet is None:
        return None
    subnet = n.env.subnet.network
    usable = max(subnet.num_addresses - 3, 1)  # network, gateway, broadcast
    gone = [r for r in n.reservations if not r.pod_present]
    share = len(n.reservations) / usable
    expected = f"no reservation of a pod that is gone; {subnet} under {NEARLY_FULL:.0%} full"
    found = f"{len(n.reservations)} of {usable} addresses reserved ({share:.0%}) in {n.ipam_dir}"
    if gone:
        found += "; pods gone: " + ", ".join(f"{r.ip} ({r.container_id[:12]} {r.ifname})" for r in gone[:5])
        if len(gone) > 5:
            found += f" and {len(gone) - 5} more"
    ok = not gone and share < NEARLY_FULL
    fix = "" if ok else ("the runtime's CNI GC releases them (or CNI DEL per container)" if gone
                         else "the node needs a bigger SubnetLen or fewer pods")
    return Hop("ipam", ok, expected, found, fix)


NODE_CHECKS = (check_daemon, check_lease, check_subnet_env, check_peers, check_rules, check_ipam)


def diagnose_node(n: NodeFacts) -> Report:
    found = [h for h in (check(n) for check in NODE_CHECKS) if h is not None]
    return Report("this node", "", found)


def read_reservations(ipam_dir: str, plugin_dir: str) -> list[Reservation]:
    """host-local's files (`<ip>` holding `<containerID>\\r\\n<ifname>`), each matched with
    the plugin's attachment state (`<dataDir>/<network>/<container>:<ifname>.json`)."""
    out = []
    for name in _listdir(ipam_dir):
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue  # lock, last_reserved_ip.N, boot_id
        try:
            with open(os.path.join(ipam_dir, name), encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        container = lines[0].strip() if lines else ""
        ifname = lines[1].strip() if len(lines) > 1 else "eth0"
        out.append(Reservation(name, container, ifname, _pod_present(plugin_dir, container, ifname)))
    return out


def _pod_present(plugin_dir: str, container: str, ifname: str) -> bool:
    try:
        with open(os.path.join(plugin_dir, f"{container}:{ifname}.json")) as fh:
            netns = json.load(fh).get("netns", "")
    except (OSError, ValueError):
        return False
    return not netns or os.path.exists(netns)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
