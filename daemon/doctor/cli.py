"""`flannelette doctor --from POD --to ADDRESS [--json]`: why can't this pod reach that address?
`flannelette doctor [--json]`: is this node sound (daemon, lease, subnet.env, peers, rules, IPAM)?

Finds its inputs where the plugin and the daemon keep them (the conflist, subnet.env,
etcd) and takes the daemon's own flags to look elsewhere. Reads only; works with the
daemon stopped (that is a note, not a broken hop). Exit status: 0 the path is sound,
1 a hop is broken, 2 the question is wrong (unknown pod, address outside the network).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from cni_plugin.podns import open_netns
from cni_plugin.status import fetch_report
from conf.errors import CniError
from conf.flannel import load_lease, load_network_config, load_subnet_env
from daemon.doctor import collect
from daemon.doctor.facts import PathFacts
from daemon.doctor.hops import Report, diagnose
from daemon.doctor.node import NodeFacts, diagnose_node, read_reservations
from daemon.etcd.registry import Registry, RegistryError
from conf.daemon import DaemonSettings
from daemon.settings import SettingsError, parse_settings

SOUND, BROKEN, WRONG_QUESTION = 0, 1, 2
DEFAULT_CONFLIST = "/etc/cni/net.d/10-flannelette.conflist"  # where packaging/install.py puts it


class QuestionError(Exception):
    """The question cannot be asked: exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flannelette doctor", description="Walk the path from a pod to an address and name the "
        "first broken hop. Also takes flanneletted's flags (--etcd-endpoints, --etcd-prefix, the "
        "--etcd-* credentials, --subnet-file, --cni-socket) to find its inputs elsewhere.")
    p.add_argument("--from", dest="source",
                   help="the pod: a netns path, a netns name (/run/netns), or a pod address on this node")
    p.add_argument("--to", dest="dest", help="the address the pod cannot reach")
    p.add_argument("--ifname", default="eth0", help="the pod's interface (default eth0)")
    p.add_argument("--conflist", default=DEFAULT_CONFLIST, help="the plugin's network configuration")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def plugin_conf(path: str) -> dict:
    """The flannelette entry of a conflist (or a single-plugin config); {} when absent."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise QuestionError(f"cannot read the plugin configuration {path}: {e}") from None
    entries = doc.get("plugins", [doc]) if isinstance(doc, dict) else []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("type") == "flannelette"), {})
    return {"name": doc.get("name", "cbr0"), **entry} if entry else {}


def resolve_pod(spec: str, conf: dict) -> str:
    """The netns path of the pod the user named."""
    try:
        address = ipaddress.ip_address(spec)
    except ValueError:
        address = None
    if address is None:
        path = spec if "/" in spec else f"/run/netns/{spec}"
        if not os.path.exists(path):
            raise QuestionError(f"unknown pod {spec!r}: no network namespace at {path}")
        return path
    data_dir = conf.get("dataDir", "/var/lib/cni/flannelette")
    for network in _listdir(data_dir):
        directory = os.path.join(data_dir, network)
        for name in _listdir(directory):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(directory, name)) as fh:
                    state = json.load(fh)
            except (OSError, ValueError):
                continue
            ips = [ip.get("address", "").split("/")[0] for ip in state.get("result", {}).get("ips", [])]
            if str(address) in ips and state.get("netns"):
                return state["netns"]
    raise QuestionError(f"unknown pod {spec}: no attachment on this node holds that address "
                        f"(looked in {data_dir})")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def inputs(args, rest: list[str]) -> tuple[DaemonSettings, dict, str]:
    """The daemon's settings, the plugin's config and the subnet.env path to use."""
    try:
        settings = parse_settings(rest, os.environ)
    except SettingsError as e:
        raise QuestionError(str(e)) from None
    conf = plugin_conf(args.conflist)
    explicit = any(a.startswith("--subnet-file") for a in rest) or "FLANNELD_SUBNET_FILE" in os.environ
    return settings, conf, settings.subnet_file if explicit else conf.get("subnetFile", settings.subnet_file)


def gather(args, rest: list[str]) -> PathFacts:
    """Everything the doctor needs, read from the node; QuestionError when it cannot ask."""
    settings, conf, subnet_file = inputs(args, rest)
    try:
        env = load_subnet_env(subnet_file)
    except CniError as e:
        raise QuestionError(f"this node has no usable {subnet_file}: {e}") from None
    if env.subnet is None or not env.networks:
        raise QuestionError(f"{subnet_file} names no IPv4 network or subnet")
    try:
        dest = ipaddress.IPv4Address(args.dest)
    except ValueError:
        raise QuestionError(f"--to {args.dest!r} is not an IPv4 address") from None
    network = env.networks[0]
    if not any(dest in n for n in env.networks):
        raise QuestionError(f"{dest} is outside the pod network {', '.join(map(str, env.networks))}")
    netns = resolve_pod(args.source, conf)
    f = PathFacts(pod=args.source, pod_netns=netns, dest=dest, network=network, subnet_gateway=env.subnet,
                  mtu=int(conf.get("mtu") or env.mtu),
                  bridge_name=conf.get("bridge", settings.cni_bridge or "cni0"),
                  hairpin_expected=bool(conf.get("hairpinMode", True)))
    _read_etcd(f, settings)
    try:
        fd = open_netns(netns)
    except CniError as e:
        raise QuestionError(f"unknown pod {args.source!r}: {e}") from None
    try:
        veth_index = collect.read_pod(f, fd, args.ifname)
    finally:
        os.close(fd)
    collect.read_node(f, veth_index)
    collect.read_iptables(f)
    collect.read_sysctls(f)
    collect.probe(f)
    _note_daemon(f, conf.get("daemonSocket", settings.cni_socket))
    return f


def _read_etcd(f: PathFacts, settings) -> None:
    registry = Registry(settings)
    try:
        raw = registry.get_config()
        if raw:
            config = load_network_config(raw)
            f.backend = config.backend.type
            f.direct_routing = config.backend.direct_routing
            if config.backend.port:
                f.vxlan_port = config.backend.port
            subnet_len = config.subnet_len or 24
        else:
            subnet_len = 24
            f.notes.append("no network config in etcd: backend assumed vxlan")
        collect.read_lease(f, registry)
    except (RegistryError, ValueError) as e:
        f.etcd_error = str(e) or type(e).__name__
        subnet_len = 24
    finally:
        registry.close()
    if f.dest_subnet is None and not f.local:
        f.dest_subnet = ipaddress.ip_network(f"{f.dest}/{subnet_len}", strict=False)


def _note_daemon(f: PathFacts, socket_path: str) -> None:
    if not socket_path:
        return
    try:
        report = fetch_report(socket_path)
    except (RuntimeError, ValueError) as e:
        f.notes.append(f"flanneletted does not answer ({e}); every answer here comes from the "
                       "kernel and etcd as they are")
        return
    f.notes.append("flanneletted answers, ready" if report.get("ready") else "flanneletted answers, not ready")


def _wrong(args, e: QuestionError) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": str(e)}))
    else:
        print(f"flannelette doctor: {e}", file=sys.stderr)
    return WRONG_QUESTION


def render(report: Report) -> str:
    lines = [f"path from {report.source} to {report.dest}" if report.dest else f"checking {report.source}"]
    width = max((len(h.name) for h in report.hops), default=0)
    for hop in report.hops:
        if hop.ok:
            lines.append(f"  ok    {hop.name.ljust(width)}  {hop.found}")
            continue
        pad = " " * (width + 10)
        lines.append(f"  FAIL  {hop.name.ljust(width)}  found:    {hop.found}")
        lines.append(f"{pad}expected: {hop.expected}")
        if hop.fix:
            lines.append(f"{pad}fix:      {hop.fix}")
    first = report.first_failure
    sound = "the path is sound" if report.dest else "the node is sound"
    lines.append(f"first broken hop: {first.name}" if first else sound)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.source is None and args.dest is None:
        try:
            report = diagnose_node(gather_node(*inputs(args, rest)))
        except QuestionError as e:
            return _wrong(args, e)
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n" if args.json else render(report))
        return SOUND if report.ok else BROKEN
    try:
        if args.source is None or args.dest is None:
            raise QuestionError("--from and --to go together (neither: check this node)")
        facts = gather(args, rest)
    except QuestionError as e:
        return _wrong(args, e)
    report = diagnose(facts)
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n" if args.json else render(report))
    return SOUND if report.ok else BROKEN


def gather_node(settings: DaemonSettings, conf: dict, subnet_file: str) -> NodeFacts:
    try:
        n = NodeFacts(load_subnet_env(subnet_file))
    except CniError as e:
        n = NodeFacts(None, env_error=str(e))
    try:
        report = fetch_report(conf.get("daemonSocket", settings.cni_socket) or settings.cni_socket)
        n.daemon_ready = bool(report.get("ready"))
    except (RuntimeError, ValueError) as e:
        n.daemon_error = str(e)
    own = n.env.subnet.network if n.env and n.env.subnet else None
    backend, direct = "vxlan", False
    registry = Registry(settings)
    try:
        raw = registry.get_config()
        if raw:
            config = load_network_config(raw)
            n.network, backend, direct = config.network, config.backend.type, config.backend.direct_routing
        _rev, kvs = registry.list_leases()
        for kv in kvs:
            lease = collect.lease_facts(load_lease(kv.key, kv.value), kv.lease_id, registry)
            if lease.subnet == own:
                n.own = lease
            else:
                n.peers.append(lease)
    except (RegistryError, ValueError) as e:
        n.etcd_error = str(e) or type(e).__name__
    finally:
        registry.close()
    if n.env is not None and n.env.subnet is not None and n.env.networks:
        k = PathFacts(pod="", pod_netns="", dest=n.env.subnet.ip, network=n.env.networks[0],
                      subnet_gateway=n.env.subnet, mtu=n.env.mtu,
                      bridge_name=conf.get("bridge", settings.cni_bridge or "cni0"),
                      backend=backend, direct_routing=direct)
        collect.read_node(k, None)
        k.iptables = collect.iptables_saves()
        n.kernel = k
    name = conf.get("name", "cbr0")
    n.ipam_dir = os.path.join(conf.get("ipam", {}).get("dataDir", "/var/lib/cni/networks"), name)
    n.reservations = read_reservations(n.ipam_dir, os.path.join(conf.get("dataDir", "/var/lib/cni/flannelette"), name))
    return n
