"""Benchmark: a node joins a cluster of N existing vxlan leases.

Each round builds a fresh node namespace (uplink eth0 on an underlay switch), then
runs a child process inside it that imports what the daemon imports
(pyetcd, pydantic), creates the vxlan backend and times the first reconcile of N
fake leases: 3 x N kernel objects (neighbour, FDB, route). The child then checks
every object with iproute2, times a no-op reconcile, a repair and a removal, and
reports its RSS. Target: < 2 s (goal 1 s) and RSS < 80 MiB (goal 50 MiB).

    sudo .venv/bin/python tests/bench/bench_join.py [--leases 5000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def fake_leases(n: int):
    from conf.flannel import Lease, LeaseAttrs

    out = []
    for x in range(n):
        third, fourth = 1 + x // 250, x % 250 + 1
        attrs = LeaseAttrs.model_validate({
            "PublicIP": f"172.16.{third}.{fourth}", "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": f"02:42:00:00:{third:02x}:{fourth:02x}"}})
        out.append(Lease(subnet=f"10.{third}.{fourth}.0/24", attrs=attrs, expiration=time.time() + 86400))
    return out


def rss_mib() -> tuple[float, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def ip_lines(*cmd: str) -> set[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def verify(n: int, keep: int) -> int:
    """Run the check in a separate process, so its big sets do not count in our RSS."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--verify", str(n), str(keep)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr or out.stdout)
    return int(out.stdout)


def check_kernel(leases) -> int:
    """Every neighbour, FDB entry and route, exactly, read back with iproute2."""
    want_neigh = {f"{l.subnet.network_address} lladdr {l.attrs.backend_data['VtepMAC']} PERMANENT"
                  for l in leases}
    want_fdb = {f"{l.attrs.backend_data['VtepMAC']} dst {l.attrs.public_ip} self permanent"
                for l in leases}
    want_route = {f"{l.subnet} via {l.subnet.network_address} onlink" for l in leases}
    have = (ip_lines("ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"),
            ip_lines("bridge", "fdb", "show", "dev", "flannel.1"),
            ip_lines("ip", "route", "show", "dev", "flannel.1"))
    for name, want, got in zip(("neighbours", "fdb", "routes"), (want_neigh, want_fdb, want_route), have):
        if want != got:
            raise SystemExit(f"{name} differ: {len(want - got)} missing, {len(got - want)} extra")
    return sum(len(h) for h in have)


def inside(n: int, direct: bool, watch: bool) -> dict:
    """Runs in the node namespace, in a fresh process."""
    import pydantic  # noqa: F401  (the daemon's imports, for an honest RSS)
    import pyetcd  # noqa: F401

    from conf.flannel import Lease, load_network_config
    from daemon.dataplane.backends import make_backend
    from daemon.dataplane.node import discover_node

    rss_imports = rss_mib()[0]
    conf = load_network_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {
        "Type": "vxlan", "DirectRouting": direct}}))
    backend = make_backend(conf, discover_node("eth0", None, None), "")  # MAC derived, not stored
    attrs = backend.prepare()
    own = Lease(subnet="10.255.1.0/24", attrs=attrs)
    backend.configure(own)
    leases = fake_leases(n)
    rss_leases = rss_mib()[0]
    wakeups = []
    if watch:  # as in the daemon: the kernel watch runs (and parses our own events) meanwhile
        backend.watch_kernel(lambda: wakeups.append(time.monotonic()))

    t = time.perf_counter()
    first = backend.reconcile(own, leases)
    join = time.perf_counter() - t
    rss_join = rss_mib()[0]
    objects = verify(n, n)

    t = time.perf_counter()
    noop = backend.reconcile(own, leases)
    steady = time.perf_counter() - t

    for lease in leases[:100]:
        subprocess.run(["ip", "route", "del", str(lease.subnet)], check=True)
    t = time.perf_counter()
    repair = backend.reconcile(own, leases)
    repair_s = time.perf_counter() - t

    t = time.perf_counter()
    removal = backend.reconcile(own, leases[: n - n // 5])
    removal_s = time.perf_counter() - t
    rss, hwm = rss_mib()
    verify(n, n - n // 5)
    time.sleep(0.5)  # let the watch catch up before counting its wakeups
    return {"join_s": join, "objects": objects, "errors": first.errors, "set": first.set,
            "steady_s": steady, "steady_set": noop.set, "repair_s": repair_s, "repaired": repair.set,
            "removal_s": removal_s, "removed": removal.removed, "rss_imports_mib": rss_imports,
            "rss_leases_mib": rss_leases, "rss_join_mib": rss_join, "rss_mib": rss, "hwm_mib": hwm, "wakeups": len(wakeups)}


def one_round(n: int, direct: bool, watch: bool) -> dict:
    from tests.support.dataplane_nodes import Underlay

    underlay = Underlay()
    try:
        node = underlay.add_node()
        out = node.ns.run(sys.executable, os.path.abspath(__file__), "--inside", "--leases", str(n),
                          *(["--direct-routing"] if direct else []),
                          *([] if watch else ["--no-watch"]), timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
        return json.loads(out.stdout.decode().splitlines()[-1])
    finally:
        underlay.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--direct-routing", action="store_true",
                    help="DirectRouting on (every peer off-segment: adds N route lookups)")
    ap.add_argument("--no-watch", action="store_true", help="without the kernel watch thread")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--verify", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.verify:
        print(check_kernel(fake_leases(args.verify[0])[: args.verify[1]]))
        return
    if args.inside:
        print(json.dumps(inside(args.leases, args.direct_routing, not args.no_watch)))
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    results = [one_round(args.leases, args.direct_routing, not args.no_watch)
               for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"join of {args.leases} vxlan leases{' (DirectRouting)' if args.direct_routing else ''}, "
          f"kernel watch {'off' if args.no_watch else 'on'}, {args.rounds} rounds, median (all rounds):")
    print(f"  first reconcile: {med['join_s']:.3f} s for {int(med['objects'])} objects verified "
          f"with iproute2, {int(med['errors'])} errors   "
          "(" + ", ".join(f"{r['join_s']:.3f}" for r in results) + ")")
    print(f"  no-op reconcile: {med['steady_s']:.3f} s ({int(med['steady_set'])} changes)")
    print(f"  repair of 100 deleted routes: {med['repair_s']:.3f} s ({int(med['repaired'])} set)")
    print(f"  removal of {args.leases // 5} leases: {med['removal_s']:.3f} s "
          f"({int(med['removed'])} objects removed)")
    print(f"  RSS: {med['rss_imports_mib']:.1f} MiB after imports, {med['rss_leases_mib']:.1f} MiB "
          f"with {args.leases} Lease models, {med['rss_join_mib']:.1f} MiB after the join, "
          f"{med['rss_mib']:.1f} MiB after repair and removal "
          f"(peak {med['hwm_mib']:.1f} MiB)")
    print(f"  kernel watch wake-ups over the run: {int(med['wakeups'])} (100 expected: one per hand "
          "deleted route of the repair step; our own changes must not wake it)")


if __name__ == "__main__":
    main()
