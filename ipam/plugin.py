"""flannelette-ipam's CNI verbs as `conf.dispatch` handlers.

The network config arrives whole (Request.raw); the IPAM part is raw["ipam"] and
the store is one per subnet, reached as `<ipam.dataDir>/<name>` (ipam/shared_store.py). Ranges come from ipam.ranges when
given, else from the node's subnet.env. The handlers keep no state between calls
and hold the store's flock for each whole operation, so the daemon may run them
on several threads at once.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from conf.cni import Dns, IPConfig, NetConf, Result, Route, load_model, load_result
from conf.dispatch import Handler, Request
from conf.errors import (
    CheckFailedError,
    CniError,
    InvalidConfigError,
    InvalidEnvError,
    NotAvailableError,
)
from conf.flannel import load_subnet_env
from conf.plugin import IpamConf
from ipam.allocator import (
    Allocator,
    Range,
    collect_garbage,
    describe,
    held_by,
    make_range_sets,
    range_sets_from_subnet_env,
    release,
)
from ipam.shared_store import SharedStore, open_store, other_stores
from ipam.store import IPAddr


@dataclass
class Network:
    """One request's view of the IPAM network: validated config and its store."""

    netconf: NetConf
    ipam: IpamConf
    store: SharedStore


@dataclass
class AddressPool:
    """Where addresses come from and which routes go with them."""

    range_sets: list[list[Range]]
    routes: list[Route]

    def covers(self, ip: IPAddr) -> bool:
        return any(ip in r for rs in self.range_sets for r in rs)


# ---------------------------------------------------------------- steps


def load_network(req: Request) -> Network:
    netconf = load_model(NetConf, req.raw)
    raw_ipam = req.raw.get("ipam")
    if not isinstance(raw_ipam, dict):
        raise InvalidConfigError("invalid network configuration: field 'ipam' must be an object")
    ipam = load_model(IpamConf, raw_ipam, where="ipam")
    return Network(netconf=netconf, ipam=ipam, store=open_store(ipam.data_dir, netconf.name))


def address_pool(ipam: IpamConf) -> AddressPool:
    """Explicit ranges win; otherwise the node's subnet.env (11 when it is missing)."""
    if ipam.ranges:
        return AddressPool(make_range_sets(ipam.ranges), list(ipam.routes or []))
    env = load_subnet_env(ipam.subnet_file)
    range_sets = range_sets_from_subnet_env(env)
    if ipam.routes is not None:
        return AddressPool(range_sets, list(ipam.routes))
    # One route per cluster network, as flannel gives host-local, but with the gateway
    # spelled out: the reference bridge's CHECK only finds routes whose gw matches.
    gateways = {rs[0].gateway.version: str(rs[0].gateway) for rs in range_sets}
    routes = [Route(dst=str(n), gw=gateways.get(n.version, ""))
              for n in (*env.networks, *env.ipv6_networks)]
    return AddressPool(range_sets, routes)


def _parse_ip(value: Any, field: str, error: type[CniError]) -> IPAddr:
    try:
        return ipaddress.ip_interface(str(value).strip()).ip  # "10.1.0.5" or "10.1.0.5/24"
    except ValueError:
        raise error(f"invalid network configuration: field '{field}': {value!r} is not an IP address") from None


def requested_ips(req: Request, netconf: NetConf) -> list[IPAddr]:
    """host-local's three ways to ask for an address, in its order."""
    out: list[IPAddr] = []
    for part in filter(None, req.env.args.get("IP", "").split(",")):
        out.append(_parse_ip(part, "CNI_ARGS.IP", InvalidEnvError))
    cni_args = netconf.args.get("cni")
    if cni_args is not None and not isinstance(cni_args, dict):
        raise InvalidConfigError("invalid network configuration: field 'args.cni' must be an object")
    sources = (("args.cni.ips", (cni_args or {}).get("ips")),
               ("runtimeConfig.ips", netconf.runtime_config.get("ips")))
    for field, values in sources:
        if values is None:
            continue
        if not isinstance(values, list):
            raise InvalidConfigError(f"invalid network configuration: field '{field}' must be a list")
        out.extend(_parse_ip(v, f"{field}[{i}]", InvalidConfigError) for i, v in enumerate(values))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- verbs


def read_resolv_conf(path: str) -> Dns:
    """host-local's resolvConf: nameserver, domain, search (last wins) and options lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidConfigError(
            f"invalid network configuration: field 'ipam.resolvConf': cannot read {path}: "
            f"{e.strerror or e}") from None
    dns = Dns()
    for line in lines:
        words = line.split()
        if not words or words[0][0] in "#;":
            continue
        key, values = words[0], words[1:]
        if key == "nameserver" and values:
            dns.nameservers.append(values[0])
        elif key == "domain" and values:
            dns.domain = values[0]
        elif key == "search":
            dns.search = values
        elif key == "options":
            dns.options.extend(values)
    return dns


def cmd_add(req: Request) -> Result:
    net = load_network(req)
    pool = address_pool(net.ipam)
    net.store = open_store(net.ipam.data_dir, net.netconf.name, pool.range_sets)
    wanted = requested_ips(req, net.netconf)
    dns = read_resolv_conf(net.ipam.resolv_conf) if net.ipam.resolv_conf else Dns()
    allocations = Allocator(net.store, pool.range_sets).allocate(
        req.env.container_id, req.env.ifname, wanted)
    return Result(
        ips=[IPConfig(address=a.address, gateway=str(a.range.gateway)) for a in allocations],
        routes=pool.routes,
        dns=dns,
    )


def cmd_del(req: Request) -> None:
    """Release the attachment's addresses; nothing held is success. Needs no subnet.env."""
    net = load_network(req)
    if os.path.isdir(net.store.dir) and release(net.store, req.env.container_id, req.env.ifname):
        return
    for store in other_stores(net.ipam.data_dir, net.netconf.name):  # the link moved since ADD
        if release(store, req.env.container_id, req.env.ifname):
            return


def cmd_check(req: Request) -> None:
    net = load_network(req)  # the store as ADD left it: CHECK moves no link
    pool = address_pool(net.ipam)
    cid, ifname = req.env.container_id, req.env.ifname
    held = held_by(net.store, cid, ifname) if os.path.isdir(net.store.dir) else []
    if not held:
        raise CheckFailedError(
            f"no IP address is allocated to container {cid} interface {ifname} in network {net.netconf.name}")
    for ip in held:
        if not pool.covers(ip):
            raise CheckFailedError(
                f"{ip} held by container {cid} interface {ifname} is outside the current ranges "
                + "; ".join(describe(rs) for rs in pool.range_sets))
    prev = load_result(net.netconf.prev_result)
    for ipc in prev.ips:
        ip = ipc.interface_address.ip
        if pool.covers(ip) and ip not in held:
            raise CheckFailedError(
                f"prevResult address {ip} is not allocated to container {cid} interface {ifname}")


def cmd_gc(req: Request) -> None:
    net = load_network(req)
    attachments = net.netconf.gc_attachments()
    if attachments is None:
        raise InvalidConfigError(
            "invalid network configuration: field 'cni.dev/valid-attachments' is required for GC")
    if not os.path.isdir(net.store.dir):
        return
    with net.store.locked():
        net.store.remove_stale_temp_files()
    collect_garbage(net.store, ((a.container_id, a.ifname) for a in attachments))


def cmd_status(req: Request) -> None:
    net = load_network(req)
    if net.ipam.ranges:
        address_pool(net.ipam)  # a bad range is a config error (7), not unavailability
        return
    try:
        address_pool(net.ipam)
    except CniError as e:
        raise NotAvailableError(f"flannelette-ipam cannot allocate: {e.msg}") from None


HANDLERS: dict[str, Handler] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "GC": cmd_gc,
    "STATUS": cmd_status,
}
