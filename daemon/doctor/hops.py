"""The path doctor's evaluation core: PathFacts -> hops, in the order a packet meets them.

Pure: no IO. Each check returns a Hop (name, ok, expected, found, fix) or None where it
does not apply to this path (no tunnel hops for a pod on this node, no FDB for host-gw).
`diagnose` runs them all and names the first that is wrong.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from cni_plugin.netlink import Route
from conf.flannel import VXLAN_OVERHEAD
from daemon.doctor.facts import PathFacts

CSUM_FIXED_IN = (5, 7)  # netfilter: nat: never update the UDP checksum when it's 0 (flannel #1279)


@dataclass
class Hop:
    name: str
    ok: bool
    expected: str
    found: str
    fix: str = ""


@dataclass
class Report:
    source: str
    dest: str
    hops: list[Hop]
    notes: list[str] = field(default_factory=list)

    @property
    def first_failure(self) -> Optional[Hop]:
        return next((h for h in self.hops if not h.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def as_dict(self) -> dict:
        first = self.first_failure
        return {"ok": self.ok, "from": self.source, "to": self.dest,
                "hops": [asdict(h) for h in self.hops],
                "first_failure": first.name if first else None, "notes": list(self.notes)}


def _in_pod(f: PathFacts, cmd: str) -> str:
    return f"nsenter --net={f.pod_netns} {cmd}"


# ---------------------------------------------------------------- the pod and its veth


def pod_interface(f: PathFacts) -> Hop:
    expected = f"eth0 up, MTU {f.mtu}"
    i = f.pod_iface
    if i is None:
        return Hop("pod-interface", False, expected, "no such interface in the pod",
                   "recreate the pod (CNI ADD did not finish or the interface was removed)")
    found = f"{i.name} {'up' if i.up else 'down'}, MTU {i.mtu}"
    if not i.up:
        return Hop("pod-interface", False, expected, found, _in_pod(f, f"ip link set {i.name} up"))
    if i.mtu != f.mtu:
        return Hop("pod-interface", False, expected, found, _in_pod(f, f"ip link set {i.name} mtu {f.mtu}"))
    return Hop("pod-interface", True, expected, found)


def pod_address(f: PathFacts) -> Hop:
    subnet = f.subnet_gateway.network
    expected = f"an address in {subnet}"
    i = f.pod_iface
    addrs = [a for a in (i.addresses if i else []) if a.version == 4]
    found = ", ".join(map(str, addrs)) or "no IPv4 address"
    ok = any(a.ip in subnet and a.ip != f.subnet_gateway.ip for a in addrs)
    return Hop("pod-address", ok, expected, found,
               "" if ok else "recreate the pod: its address is gone or from another lease (CNI DEL + ADD)")


def _best_route(routes: list[Route], dest: ipaddress.IPv4Address) -> Optional[Route]:
    matching = [r for r in routes if dest in ipaddress.ip_network(r.dst)]
    return max(matching, key=lambda r: ipaddress.ip_network(r.dst).prefixlen) if matching else None


def pod_routes(f: PathFacts) -> Hop:
    gw = str(f.subnet_gateway.ip)
    expected = f"a route to {f.dest} via {gw}" if not f.local else f"{f.subnet_gateway.network} on-link"
    best = _best_route(f.pod_routes, f.dest)
    if best is None:
        return Hop("pod-routes", False, expected, f"no route to {f.dest} in the pod",
                   _in_pod(f, f"ip route add {f.network} via {gw} dev eth0"))
    found = f"{best.dst} via {best.gateway}" if best.gateway else f"{best.dst} on-link"
    ok = best.gateway == gw or (not best.gateway and f.dest in ipaddress.ip_network(best.dst) and f.dest in f.subnet_gateway.network)
    fix = "" if ok else _in_pod(f, f"ip route replace {best.dst} via {gw} dev eth0")
    return Hop("pod-routes", ok, expected, found, fix)


def veth(f: PathFacts) -> Hop:
    hairpin = "on" if f.hairpin_expected else "off"
    expected = f"host veth up, on {f.bridge_name}, hairpin {hairpin}, MTU {f.mtu}"
    v = f.veth
    if v is None:
        return Hop("veth", False, expected, "the pod's veth has no host end",
                   "recreate the pod (CNI DEL + ADD)")
    found = (f"{v.name} {'up' if v.up else 'down'}, on {v.master or 'no bridge'}, hairpin "
             f"{'unknown' if v.hairpin is None else 'on' if v.hairpin else 'off'}, MTU {v.mtu}")
    if not v.up:
        return Hop("veth", False, expected, found, f"ip link set {v.name} up")
    if v.master != f.bridge_name:
        return Hop("veth", False, expected, found, f"ip link set {v.name} master {f.bridge_name}")
    if v.hairpin is not None and v.hairpin != f.hairpin_expected:
        return Hop("veth", False, expected, found, f"bridge link set dev {v.name} hairpin {hairpin}")
    if v.mtu != f.mtu:
        return Hop("veth", False, expected, found, f"ip link set {v.name} mtu {f.mtu}")
    return Hop("veth", True, expected, found)


def bridge(f: PathFacts) -> Hop:
    name = f.bridge_name
    expected = f"{name} up, address {f.subnet_gateway}, MTU {f.mtu}"
    b = f.bridge
    if b is None:
        return Hop("bridge", False, expected, f"no {name}", "recreate a pod on this node (CNI ADD makes the bridge)")
    addrs = [a for a in b.addresses if a.version == 4]
    found = f"{name} {'up' if b.up else 'down'}, address {', '.join(map(str, addrs)) or 'none'}, MTU {b.mtu}"
    if not b.up:
        return Hop("bridge", False, expected, found, f"ip link set {name} up")
    if f.subnet_gateway not in addrs:
        fix = (f"ip addr add {f.subnet_gateway} dev {name}" if not addrs else
               f"{name} holds another lease's address: drain the node, ip link delete {name}, recreate the pods")
        return Hop("bridge", False, expected, found, fix)
    if b.mtu > f.mtu:  # a bridge takes its ports' smallest MTU; bigger means a port is missing or wrong
        return Hop("bridge", False, expected, found, f"ip link set {name} mtu {f.mtu}")
    return Hop("bridge", True, expected, found)


# ---------------------------------------------------------------- the node's routing to the peer


def _route_text(r: Route) -> str:
    via = f" via {r.gateway}" if r.gateway else ""
    return f"{r.dst}{via} dev {r.dev}{' onlink' if r.onlink else ''}"


def node_route(f: PathFacts) -> Optional[Hop]:
    if f.local:
        subnet = f.subnet_gateway.network
        found = [r for r in f.node_routes if r.dst == str(subnet)]
        ok = any(r.dev == f.bridge_name and not r.gateway for r in found)
        return Hop("node-route", ok, f"{subnet} dev {f.bridge_name}",
                   "; ".join(map(_route_text, found)) or f"no route for {subnet}",
                   "" if ok else f"ip link set {f.bridge_name} up (the kernel adds the route with the address)")
    if f.dest_subnet is None or f.backend == "alloc":
        return None
    subnet = f.dest_subnet
    if f.direct_route_expected:
        if f.lease is None:
            expected = f"{subnet} via the peer's public IP"
            ok_route = lambda r: bool(r.gateway)  # noqa: E731 - without a lease any gateway will do
        else:
            expected = f"{subnet} via {f.lease.public_ip}"
            ok_route = lambda r: r.gateway == f.lease.public_ip  # noqa: E731
    else:
        expected = f"{subnet} via {subnet.network_address} dev flannel.1 onlink"
        ok_route = lambda r: (r.gateway == str(subnet.network_address)  # noqa: E731
                              and r.dev == "flannel.1" and r.onlink)
    found = [r for r in f.node_routes if r.dst == str(subnet)]
    ok = any(ok_route(r) for r in found)
    fix = ""
    if not ok:
        fix = ("restart flanneletted (it programs the route from the lease)" if f.lease is not None
               else "no lease for the subnet: the route cannot be right; see the peer-lease hop")
    return Hop("node-route", ok, expected, "; ".join(map(_route_text, found)) or f"no route for {subnet}", fix)


def vxlan_neighbour(f: PathFacts) -> Optional[Hop]:
    if f.local or not f.encapsulated or f.dest_subnet is None:
        return None
    ip = f.vtep_address
    have = f.neighbours.get(ip)
    want = f.lease.vtep_mac if f.lease is not None and f.lease.backend == "vxlan" else ""
    expected = f"{ip} lladdr {want or '<the lease VtepMAC>'} PERMANENT on flannel.1"
    found = f"{ip} lladdr {have} PERMANENT" if have else f"no permanent neighbour for {ip}"
    ok = bool(have) and (not want or have == want)
    fix = "" if ok else f"ip neigh replace {ip} lladdr {want or '<VtepMAC>'} dev flannel.1 nud permanent"
    return Hop("vxlan-neighbour", ok, expected, found, fix)


def vxlan_fdb(f: PathFacts) -> Optional[Hop]:
    if f.local or not f.encapsulated or f.dest_subnet is None:
        return None
    mac = f.lease.vtep_mac if f.lease is not None and f.lease.backend == "vxlan" else f.neighbours.get(f.vtep_address, "")
    public = f.lease.public_ip if f.lease is not None else ""
    expected = f"{mac or '<VtepMAC>'} dst {public or '<the peer public IP>'} on flannel.1"
    have = f.fdb.get(mac) if mac else None
    found = f"{mac} dst {have}" if have else f"no FDB entry for {mac or 'the peer VTEP'}"
    ok = bool(have) and (not public or have == public)
    fix = "" if ok else f"bridge fdb replace {mac or '<VtepMAC>'} dev flannel.1 dst {public or '<PublicIP>'} self permanent"
    return Hop("vxlan-fdb", ok, expected, found, fix)


def peer_lease(f: PathFacts) -> Optional[Hop]:
    if f.local or f.dest_subnet is None:
        return None
    expected = f"a live lease for {f.dest_subnet} in etcd, backend {f.backend}"
    if f.etcd_error:
        return Hop("peer-lease", False, expected, f"cannot read etcd: {f.etcd_error}",
                   "check --etcd-endpoints and the credentials")
    lease = f.lease
    if lease is None:
        return Hop("peer-lease", False, expected, f"no lease for {f.dest_subnet}",
                   "start flanneletted on the node that owns the subnet; pods there keep stale addresses until it is back")
    found = f"{lease.subnet} public IP {lease.public_ip}, backend {lease.backend}"
    if lease.ttl is not None:
        found += f", expires in {lease.ttl} s" if lease.ttl > 0 else ", expired"
    if lease.ttl is not None and lease.ttl <= 0:
        return Hop("peer-lease", False, expected, found, "restart flanneletted on the peer node")
    if lease.backend != f.backend:
        return Hop("peer-lease", False, expected, found,
                   f"run every node with the network config's backend ({f.backend}); restart flanneletted on the peer")
    return Hop("peer-lease", True, expected, found)


# ---------------------------------------------------------------- the wire


def underlay(f: PathFacts) -> Optional[Hop]:
    if f.local or f.lease is None or f.backend == "alloc":
        return None
    p, public = f.probes, f.lease.public_ip
    expected = f"{public} answers" + (f"; {f.vtep_address} answers through VXLAN (UDP {f.vxlan_port})"
                                       if f.encapsulated else "")
    if p.public_ip is False:
        return Hop("underlay", False, expected, f"{public} does not answer ping",
                   f"check the link between this node and {public} (ip route get {public})")
    found = f"{public} answers" if p.public_ip else f"{public} not probed"
    if f.encapsulated and p.tunnel is False:
        return Hop("underlay", False, expected, found + f"; nothing comes back through VXLAN from {f.vtep_address}",
                   f"let UDP {f.vxlan_port} pass between this node and {public} (firewalls, security groups); "
                   "run `flannelette doctor` on the peer too")
    if f.encapsulated and p.tunnel:
        found += f"; {f.vtep_address} answers through VXLAN"
    return Hop("underlay", True, expected, found)


def mtu(f: PathFacts) -> Optional[Hop]:
    if f.local or not f.encapsulated or f.lease is None:
        return None
    parts, fixes = [], []
    vtep, up = f.vtep, f.uplink
    expected = f"pod MTU {f.mtu} = flannel.1 MTU <= uplink MTU - {VXLAN_OVERHEAD}; DF probe of {f.mtu} bytes passes"
    if vtep is None:
        return Hop("mtu", False, expected, "no flannel.1", "restart flanneletted (it creates flannel.1)")
    parts.append(f"flannel.1 MTU {vtep.mtu}")
    if up is not None:
        parts.append(f"uplink {up.name} MTU {up.mtu}")
        if vtep.mtu + VXLAN_OVERHEAD > up.mtu:
            fixes.append(f"ip link set flannel.1 mtu {up.mtu - VXLAN_OVERHEAD}")
    if vtep.mtu != f.mtu:
        fixes.append(f"ip link set flannel.1 mtu {f.mtu}")
    if f.probes.tunnel_df is False:
        parts.append(f"a {f.mtu}-byte DF probe to {f.vtep_address} gets no answer")
        fixes.append(f"find the smaller MTU on the way to {f.lease.public_ip} (tracepath {f.lease.public_ip})")
    elif f.probes.tunnel_df:
        parts.append(f"a {f.mtu}-byte DF probe passes")
    return Hop("mtu", not fixes, expected, ", ".join(parts), "; ".join(fixes))


def _policy(save: str, chain: str) -> str:
    m = re.search(rf"^:{chain} (\S+)", _table(save, "filter"), re.M)
    return m.group(1) if m else "ACCEPT"


def _table(save: str, name: str) -> str:
    m = re.search(rf"^\*{name}\n(.*?)^COMMIT", save, re.M | re.S)
    return m.group(1) if m else ""


def forward_rules(f: PathFacts) -> Optional[Hop]:
    net = str(f.network)
    expected = f"FORWARD accepts {net} (policy ACCEPT, or flannelette's FLANNEL-FWD rules)"
    if not f.iptables:
        return Hop("forward-rules", True, expected, "no iptables tables: nothing filters forwarded packets")
    found, broken = [], []
    for backend, save in sorted(f.iptables.items()):
        label = f"iptables-{backend}" if backend else "iptables"
        filt = _table(save, "filter")
        if not filt:
            found.append(f"{label}: no filter table")
            continue
        policy = _policy(save, "FORWARD")
        ours = (f"-A FLANNEL-FWD -s {net}" in filt and f"-A FLANNEL-FWD -d {net}" in filt
                and "-j FLANNEL-FWD" in filt)
        masq = "FLANNEL-POSTRTG" in _table(save, "nat")
        found.append(f"{label}: FORWARD policy {policy}, forward rules {'present' if ours else 'absent'}, "
                     f"masquerade rules {'present' if masq else 'absent'}")
        if policy != "ACCEPT" and not ours:
            broken.append(label)
    fix = "" if not broken else (
        f"run flanneletted with --ip-masq (it adds FORWARD accepts for {net}), or: "
        + "; ".join(f"{b} -A FORWARD -s {net} -j ACCEPT; {b} -A FORWARD -d {net} -j ACCEPT" for b in broken))
    return Hop("forward-rules", not broken, expected, "; ".join(found), fix)


def rp_filter(f: PathFacts) -> Optional[Hop]:
    """Strict reverse-path filtering drops a packet whose source the kernel would not route
    back out of the interface it came in on: check that for both directions of the path."""
    if not f.rp_filter:
        return None
    pod_ip = next((str(a.ip) for a in (f.pod_iface.addresses if f.pod_iface else []) if a.version == 4), "")
    ingress = {f.bridge_name: pod_ip}  # the pod's packets enter the node on cni0
    if not f.local:  # replies enter on flannel.1 (vxlan) or the uplink (direct routes)
        dev = "flannel.1" if f.encapsulated else (f.uplink.name if f.uplink else "")
        if dev:
            ingress[dev] = str(f.dest)
    default = f.rp_filter.get("all", 0)
    found, broken = [], []
    for dev, source in ingress.items():
        mode = max(default, f.rp_filter.get(dev, 0))
        back = f.reverse_dev.get(source, "")
        found.append(f"{dev} {('off', 'strict', 'loose')[mode] if mode in (0, 1, 2) else mode}"
                     + (f" (route back to {source} via {back or 'none'})" if mode == 1 else ""))
        if mode == 1 and source and back != dev:
            broken.append(dev)
    fix = "; ".join(f"sysctl -w net.ipv4.conf.{d}.rp_filter=2 (and net.ipv4.conf.all.rp_filter=2 if it is 1)"
                    for d in broken)
    return Hop("rp-filter", not broken, "no strict reverse-path check that this path fails",
               ", ".join(found), fix)


def _kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def checksum_offload(f: PathFacts) -> Optional[Hop]:
    if f.local or not f.encapsulated or f.vtep is None or f.tx_checksum is None:
        return None
    version = _kernel_version(f.kernel)
    state = "on" if f.tx_checksum else "off"
    found = f"flannel.1 tx checksum offload {state}, kernel {f.kernel}"
    expected = (f"tx checksum offload off on kernels before {CSUM_FIXED_IN[0]}.{CSUM_FIXED_IN[1]} "
                "(NATed VXLAN packets with a bad checksum: the 63-second delays of flannel #1279)")
    ok = version >= CSUM_FIXED_IN or not f.tx_checksum
    return Hop("checksum-offload", ok, expected, found,
               "" if ok else "ethtool -K flannel.1 tx-checksum-ip-generic off")


CHECKS: tuple[Callable[[PathFacts], Optional[Hop]], ...] = (
    pod_interface, pod_address, pod_routes, veth, bridge, node_route, vxlan_neighbour, vxlan_fdb,
    peer_lease, underlay, mtu, forward_rules, rp_filter, checksum_offload)


def diagnose(f: PathFacts) -> Report:
    hops = [h for h in (check(f) for check in CHECKS) if h is not None]
    return Report(f.pod, str(f.dest), hops, list(f.notes))
