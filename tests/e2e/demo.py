"""`make demo`: a 3-node flannelette cluster (vxlan) in network namespaces, left running.

    python -m tests.e2e.demo up      # build it, print leases, routes, neighbours, FDB, pings
    python -m tests.e2e.demo down    # remove everything `up` created

`up` records what it created (processes with their start times, namespaces, directories)
in <state-dir>/state.json; `down` removes exactly that, so it works from a new shell.
Nothing is done in the root network namespace.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys

from tests.e2e.cluster import Cluster, ClusterSpec, Pod
from tests.e2e.resources import Resources

STATE_DIR = "/run/flannelette-demo"
STEM = "flt-demo"
NODES, PODS_PER_NODE = 3, 2


def state_file(state_dir: str) -> str:
    return os.path.join(state_dir, "state.json")


def up(state_dir: str, stem: str) -> int:
    if os.path.exists(state_file(state_dir)):
        print(f"a demo is already running (state in {state_file(state_dir)}); "
              "run `make demo-down` first", file=sys.stderr)
        return 1
    spec = ClusterSpec(backend="vxlan", nodes=NODES, stem=stem,
                       workdir=os.path.join(state_dir, "cluster"))
    cluster = Cluster(spec)
    cluster.start()  # removes what it built if it fails
    try:
        for node in cluster.nodes:
            for _ in range(PODS_PER_NODE):
                cluster.add_pod(node)
        cluster.wait_converged()
    except BaseException:
        cluster.close()
        raise
    save_state(cluster, state_dir)
    print(report(cluster))
    return 0


def save_state(cluster: Cluster, state_dir: str) -> None:
    resources = cluster.record()
    resources.directories.append(state_dir)
    state = {"resources": json.loads(resources.to_json()),
             "nodes": {n.name: n.ns.name for n in cluster.nodes},
             "pods": {p.label: {"netns": p.ns.name, "ip": p.ip} for p in cluster.pods}}
    os.makedirs(state_dir, exist_ok=True)
    with open(state_file(state_dir), "w") as f:
        json.dump(state, f, indent=2)


def down(state_dir: str, stem: str) -> int:
    path = state_file(state_dir)
    if not os.path.exists(path):
        print(f"no demo state in {path}: nothing to remove")
        leftovers: list[str] = []
    else:
        with open(path) as f:
            resources = Resources.from_json(json.dumps(json.load(f)["resources"]))
        leftovers = resources.teardown()
    # Namespaces named after the demo stem are ours even when the state file is lost.
    stray = _namespaces_with_stem(stem)
    if stray:
        leftovers += Resources(namespaces=stray).teardown()
    shutil.rmtree(state_dir, ignore_errors=True)
    if leftovers:
        print(f"could not remove: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    print("flannelette demo removed: daemons and etcd stopped, namespaces and files deleted")
    return 0


def _namespaces_with_stem(stem: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(stem + "-")]


# ---------------------------------------------------------------- what `up` prints


def _indent(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join("    " + line for line in lines) if lines else "    (none)"


def report(cluster: Cluster) -> str:
    assert cluster.etcd is not None and cluster.underlay is not None
    leases = cluster.leases()
    prefix = cluster.spec.prefix
    out = [f"flannelette demo: {len(cluster.nodes)} nodes (vxlan), {len(cluster.pods)} pods, "
           f"etcd at {cluster.etcd.endpoint} in netns {cluster.underlay.ns.name}", ""]
    for node in cluster.nodes:
        key = f"{node.subnet.network_address}-{node.subnet.prefixlen}"
        plane = node.data_plane()
        out += [f"=== {node.name}: netns {node.ns.name}, public IP {node.ip}, subnet {node.subnet}",
                f"  lease {prefix}/subnets/{key}",
                "    " + json.dumps(leases.get(key), separators=(",", ":")),
                "  routes (ip route)", _indent(plane["routes"]),
                "  neighbours (ip neigh show dev flannel.1)",
                _indent(node.ns.run("ip", "neigh", "show", "dev", "flannel.1").stdout.decode()),
                "  FDB (bridge fdb show dev flannel.1)", _indent(plane["fdb"]),
                "  pods"]
        out += [f"    {p.name}  {p.ip:<14} netns {p.ns.name}" for p in node.pods]
        out.append("")
    out += ["lease table as node1's daemon reports it (flannelette status):",
            _indent(_status(cluster)), "", ping_matrix(cluster.pods), "", explore(cluster)]
    return "\n".join(out)


def _status(cluster: Cluster) -> str:
    node = cluster.nodes[0]
    proc = node.ns.run(os.path.join(cluster.bin_dir, "flannelette"), "status",
                       "--socket", node.cni_socket, check=False)
    return (proc.stdout or proc.stderr).decode()


def ping_matrix(pods: list[Pod]) -> str:
    """Rows ping columns: round-trip ms of one ping, or FAIL."""
    labels = [p.label for p in pods]
    width = max(map(len, labels)) + 2
    lines = ["cross-node ping matrix (row pings column; round-trip ms)",
             " " * (width + 16) + "".join(label.ljust(width) for label in labels)]
    results = {}
    for a, b in itertools.permutations(pods, 2):
        out = a.ns.run("ping", "-n", "-c1", "-W2", b.ip, check=False)
        rtt = [w for w in out.stdout.decode().split() if w.startswith("time=")]
        results[a.label, b.label] = rtt[0][5:] if out.returncode == 0 and rtt else "FAIL"
    for a in pods:
        cells = ["-" if a is b else results[a.label, b.label] for b in pods]
        lines.append(f"{a.label:<{width}}{a.ip:<16}" + "".join(c.ljust(width) for c in cells))
    failed = sum(v == "FAIL" for v in results.values())
    lines.append(f"{len(results) - failed}/{len(results)} pod pairs reachable")
    return "\n".join(lines)


def explore(cluster: Cluster) -> str:
    assert cluster.etcd is not None and cluster.underlay is not None
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    p1, p2 = n1.pods[0], n2.pods[0]
    ul = cluster.underlay.ns.name
    return "\n".join([
        "The cluster keeps running. Explore it:",
        f"  ip netns exec {p1.ns.name} ping {p2.ip}",
        f"  ip netns exec {ul} tcpdump -ni {n1.attachment.port} -T vxlan udp port 8472   # the VXLAN path",
        f"  ip netns exec {n1.ns.name} ip -d link show flannel.1",
        f"  ip netns exec {ul} etcdctl --endpoints {cluster.etcd.endpoint} "
        f"get --prefix {cluster.spec.prefix}",
        f"  ip netns exec {n1.ns.name} {cluster.bin_dir}/flannelette status --socket {n1.cni_socket}",
        "  why can't a pod reach another? (without --from/--to: is the node sound?)",
        "  " + " ".join(n1.doctor_argv("--from", p1.ns.name, "--to", p2.ip)),
        f"  daemon logs: {os.path.dirname(n1.log_path).rsplit('/', 1)[0]}/node*/flanneletted.log",
        "Tear it down with: make demo-down"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--state-dir", default=STATE_DIR)
    parser.add_argument("--stem", default=STEM, help="namespace name prefix (starts with flt-)")
    args = parser.parse_args(argv)
    if not args.stem.startswith("flt-"):
        parser.error("--stem must start with flt-")
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces)", file=sys.stderr)
        return 1
    return (up if args.command == "up" else down)(args.state_dir, args.stem)


if __name__ == "__main__":
    sys.exit(main())
