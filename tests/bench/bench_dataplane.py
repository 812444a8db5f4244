"""Benchmark (not a test): pod-to-pod TCP throughput and ping RTT per data plane, against
the node-to-node underlay measured in the same run.

    python -m tests.bench dataplane [--quick]
    python -m tests.bench.bench_dataplane [--quick] [--plots DIR]   (prints the section)

One cluster per data plane (vxlan, vxlan with `UDPChecksum: false`, vxlan with
DirectRouting, host-gw), one after the other: a real etcd, two on-link node namespaces
each running the real `flanneletted`, pods wired by the installed `flannelette` (two on
node1, one on node2). In each cluster,
round by round and interleaved so that a load change on the machine hits every path
alike: iperf3 (`-J`, 1 stream and `-P 4`) and ping for
- underlay: node1 -> node2 over their eth0 (the baseline of the ratios),
- two nodes: node1/pod1 -> node2/pod1 (what the data plane carries),
- same node: node1/pod1 -> node1/pod2 (the bridge only; measured in the first cluster).
In both vxlan clusters the same rounds run again with the nodes' eth0 told it cannot
segment VXLAN with UDP checksums (ethtool; skipped with the reason where it is missing).
Figures are medians over the rounds. The MTU is checked end to end: a don't-fragment
ping of the largest size passes and one byte more fails, iperf3's MSS matches the pod
MTU, and the kernel's IP fragmentation counters in every node and pod stay at zero.

The underlay is veth pairs through a bridge namespace on one kernel: no NIC, no wire;
every byte is copied by the same (shared, 2-core) CPUs that run iperf3 on both ends.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from tests.e2e.cluster import Cluster, ClusterSpec
from tests.support.netns import NetNS

# An uplink that segments VXLAN but not VXLAN with UDP checksums (some older and virtual
# NICs): the veth is told to lack it, so the VTEP's UDPChecksum decides who segments.
NO_TUNNEL_CSUM_OFFLOAD = {"label": "uplink without tunnel-checksum segmentation",
                          "features": {"tx-udp_tnl-csum-segmentation": "off"}}
DATA_PLANES = [  # goal: two-nodes throughput as a share of the underlay's
    {"label": "vxlan", "backend": "vxlan", "goal": 0.90,
     "uplink_variants": [NO_TUNNEL_CSUM_OFFLOAD]},
    {"label": "vxlan UDPChecksum=false", "backend": "vxlan", "goal": 0.90,
     "backend_options": {"UDPChecksum": False}, "uplink_variants": [NO_TUNNEL_CSUM_OFFLOAD]},
    {"label": "vxlan+DirectRouting", "backend": "vxlan", "direct": True, "goal": 0.95},
    {"label": "host-gw", "backend": "host-gw", "goal": 0.95},
]
STREAMS = (1, 4)
UNDERLAY, TWO_NODES, SAME_NODE = "underlay", "two nodes", "same node"
IPERF_PORT = 5201
PING_COUNT = 20
_RTT = re.compile(rb"time=([\d.]+) ms")
FRAG_COUNTERS = ("FragCreates", "FragFails", "ReasmReqds")  # any of these moving: fragments


def _settings(quick: bool) -> dict:
    return {"rounds": 3, "seconds": 2, "omit": 1} if quick else {"rounds": 5, "seconds": 5, "omit": 1}


# ---------------------------------------------------------------- measuring primitives


class IperfServer:
    """`iperf3 -s` inside a namespace for the life of a cluster (one test at a time)."""

    def __init__(self, ns: NetNS, log_path: str):
        self.log = open(log_path, "wb")
        self.proc = ns.popen("iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush", stdout=self.log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while b"listening" not in open(log_path, "rb").read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 -s in {ns.name}: {open(log_path, 'rb').read()!r}")
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def iperf(ns: NetNS, server_ip: str, streams: int, cfg: dict) -> dict:
    """One iperf3 client run; Gbit/s received, retransmits, MSS, CPU use of both ends."""
    argv = ["iperf3", "-J", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(cfg["seconds"]),
            "-O", str(cfg["omit"]), "-P", str(streams), "--connect-timeout", "3000"]
    for attempt in range(3):  # the server refuses a test while it is still closing the last
        proc = ns.run(*argv, check=False, timeout=cfg["seconds"] + cfg["omit"] + 30)
        out = json.loads(proc.stdout or b"{}")
        if proc.returncode == 0 and "error" not in out:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"iperf3 in {ns.name} -> {server_ip}: {out.get('error')!r} "
                           f"{proc.stderr.decode()[-300:]}")
    end = out["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "mss": out["start"].get("tcp_mss_default"),
            "cpu_client": end["cpu_utilization_percent"]["host_total"],
            "cpu_server": end["cpu_utilization_percent"]["remote_total"]}


def ping_rtts(ns: NetNS, ip: str) -> list[float]:
    """PING_COUNT round trips in ms, 20 ms apart."""
    proc = ns.run("ping", "-n", "-c", str(PING_COUNT), "-i", "0.02", "-W", "1", ip, check=False)
    rtts = [float(m) for m in _RTT.findall(proc.stdout)]
    if len(rtts) < PING_COUNT // 2:
        raise RuntimeError(f"ping {ip} from {ns.name}: {proc.stdout.decode()[-300:]}")
    return rtts


def df_ping(ns: NetNS, ip: str, payload: int) -> tuple[bool, str]:
    """A don't-fragment ping of `payload` ICMP data bytes: (passed, what ping said)."""
    proc = ns.run("ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", str(payload), ip, check=False)
    text = (proc.stdout + proc.stderr).decode().strip().splitlines()
    said = next((line for line in text if "too long" in line or "bytes from" in line),
                text[-1] if text else "")
    return proc.returncode == 0, said.strip()


def mtu_of(ns: NetNS, dev: str = "eth0") -> int:
    return int(ns.out("cat", f"/sys/class/net/{dev}/mtu"))


def ip_counters(ns: NetNS) -> dict[str, int]:
    """The `Ip:` line of /proc/net/snmp inside `ns`."""
    header, values = [line.split()[1:] for line in ns.out("cat", "/proc/net/snmp").splitlines()
                      if line.startswith("Ip:")][:2]
    return dict(zip(header, map(int, values)))


def offloads(ns: NetNS, dev: str) -> dict[str, str]:
    """The offload switches that decide the cost of a byte on `dev` (needs ethtool)."""
    if not shutil.which("ethtool"):
        return {}
    out = ns.run("ethtool", "-k", dev, check=False).stdout.decode()
    keep = ("tx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload",
            "generic-receive-offload", "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation",
            "rx-udp-gro-forwarding", "rx-gro-list")
    return {k.strip(): v.split()[0] for k, v in (line.split(":", 1) for line in out.splitlines()
                                                if ":" in line) if k.strip() in keep}


# ---------------------------------------------------------------- one cluster


def _mtu_check(client: NetNS, server_ip: str, mtu: int) -> dict:
    largest = mtu - 28  # IPv4 + ICMP headers
    ok, said = df_ping(client, server_ip, largest)
    over_ok, over_said = df_ping(client, server_ip, largest + 1)
    return {"mtu": mtu, "largest_payload": largest, "largest_passes": ok, "largest_said": said,
            "one_more_fails": not over_ok, "one_more_said": over_said}


def _rounds(paths: dict, cfg: dict) -> dict:
    """cfg["rounds"] rounds, every path in each: ping, then iperf3 per stream count."""
    out: dict = {"paths": {p: {str(s): [] for s in STREAMS} for p in paths},
                 "rtt_ms": {p: [] for p in paths}}
    for _ in range(cfg["rounds"]):
        for name, (client, _, ip) in paths.items():
            out["rtt_ms"][name].append(ping_rtts(client, ip))
            for streams in STREAMS:
                out["paths"][name][str(streams)].append(iperf(client, ip, streams, cfg))
    return out


def _set_features(nss: list[NetNS], dev: str, features: dict[str, str]) -> None:
    for ns in nss:
        args = [x for kv in features.items() for x in kv]
        ns.run("ethtool", "-K", dev, *args)


def measure_cluster(plane: dict, cfg: dict, same_node: bool) -> list[dict]:
    """The paths of one data plane's cluster; a second entry per uplink variant asked for."""
    spec = ClusterSpec(backend=plane["backend"], direct_routing=plane.get("direct", False),
                       nodes=2, routed_nodes=0, stem="flt-dp" + os.urandom(2).hex(),
                       backend_options=plane.get("backend_options", {}))
    cluster = Cluster(spec)
    servers: list[IperfServer] = []
    try:
        cluster.start()
        n1, n2 = cluster.nodes
        a1, a2 = cluster.add_pod(n1), cluster.add_pod(n1)
        b1 = cluster.add_pod(n2)
        paths = {UNDERLAY: (n1.ns, n2.ns, n2.ip), TWO_NODES: (a1.ns, b1.ns, b1.ip)}
        if same_node:
            paths[SAME_NODE] = (a1.ns, a2.ns, a2.ip)
        for name, (_, server_ns, _) in paths.items():
            log = os.path.join(cluster.workdir, f"iperf3-{name.replace(' ', '-')}.log")
            servers.append(IperfServer(server_ns, log))
        everyone = [n1.ns, n2.ns, a1.ns, a2.ns, b1.ns]
        frag_before = {ns.name: ip_counters(ns) for ns in everyone}
        mtu = {name: _mtu_check(client, ip, mtu_of(client)) for name, (client, _, ip) in paths.items()}
        main = {"label": plane["label"], "goal": plane["goal"], **_rounds(paths, cfg), "mtu": mtu}
        entries = [main]
        for variant in plane.get("uplink_variants", []):
            if not shutil.which("ethtool"):
                main.setdefault("skipped", []).append(f"{variant['label']}: no ethtool here")
                continue
            _set_features([n1.ns, n2.ns], "eth0", variant["features"])
            two = {p: paths[p] for p in (UNDERLAY, TWO_NODES)}
            entries.append({"label": f"{plane['label']}, {variant['label']}", "goal": None,
                            "variant_of": plane["label"], "features": variant["features"],
                            **_rounds(two, cfg),
                            "mtu": {TWO_NODES: _mtu_check(a1.ns, b1.ip, mtu_of(a1.ns))}})
            _set_features([n1.ns, n2.ns], "eth0", {k: "on" for k in variant["features"]})
        frag_after = {ns.name: ip_counters(ns) for ns in everyone}
        fragments = {ns: {c: frag_after[ns][c] - frag_before[ns][c] for c in FRAG_COUNTERS}
                     for ns in frag_before}
        for entry in entries:
            entry["fragments"] = fragments  # over the whole cluster run, variants included
        main["offloads"] = {"node1 eth0 (underlay veth)": offloads(n1.ns, "eth0"),
                            "node1 pod veth": offloads(n1.ns, _host_veth(n1.ns)),
                            "pod eth0": offloads(a1.ns, "eth0")}
        if spec.backend == "vxlan":
            main["offloads"]["node1 flannel.1"] = offloads(n1.ns, "flannel.1")
            main["vtep"] = _vtep_details(n1.ns)
        return entries
    finally:
        for s in servers:
            s.close()
        leftovers = cluster.close()
        if leftovers:
            print(f"dataplane bench: {spec.label} teardown left {leftovers}", file=sys.stderr)


def _host_veth(ns: NetNS) -> str:
    """The node side of a pod's veth (the first veth enslaved to cni0)."""
    links = json.loads(ns.out("ip", "-j", "link", "show", "master", "cni0"))
    return next(link["ifname"] for link in links if link["ifname"] != "cni0")


def _vtep_details(ns: NetNS) -> str:
    """The vxlan line of `ip -d link show flannel.1` (UDP checksums, ports, ...)."""
    out = ns.out("ip", "-d", "link", "show", "flannel.1")
    return next((line.strip() for line in out.splitlines() if line.strip().startswith("vxlan")), "")


# ---------------------------------------------------------------- the benchmark contract


def measure(quick: bool) -> dict:
    cfg = _settings(quick)
    clusters = []
    for i, plane in enumerate(DATA_PLANES):
        print(f"dataplane: {plane['label']} ...", file=sys.stderr, flush=True)
        clusters += measure_cluster(plane, cfg, same_node=i == 0)
    return {"settings": cfg, "streams": list(STREAMS), "kernel": os.uname().release,
            "clusters": clusters}


def _median_gbps(samples: list[dict]) -> float:
    return statistics.median(s["gbps"] for s in samples)


def _per_cpu(sample: dict) -> float:
    """Gbit/s per CPU busy in the two iperf3 processes (which run most of the softirq work
    of veth, bridge, routing and VXLAN in their context): the cost of a byte, which a
    loaded machine disturbs far less than the throughput itself."""
    return sample["gbps"] / max((sample["cpu_client"] + sample["cpu_server"]) / 100, 1e-9)


def _median_per_cpu(samples: list[dict]) -> float:
    return statistics.median(_per_cpu(s) for s in samples)


def summary(results: dict) -> list[dict]:
    """One row per (data plane, path, streams): median Gbit/s and ratio to its underlay."""
    rows = []
    for c in results["clusters"]:
        for path, by_streams in c["paths"].items():
            for streams, samples in by_streams.items():
                base = _median_gbps(c["paths"][UNDERLAY][streams])
                gbps = _median_gbps(samples)
                goal = c["goal"] if path == TWO_NODES else None
                per_cpu = _median_per_cpu(samples)
                rows.append({"plane": c["label"], "path": path, "streams": int(streams),
                             "gbps": gbps, "underlay_gbps": base, "ratio": gbps / base,
                             "goal": goal, "met": None if goal is None else gbps / base >= goal,
                             "retransmits": statistics.median(s["retransmits"] for s in samples),
                             "mss": samples[0]["mss"], "per_cpu": per_cpu,
                             "per_cpu_ratio": per_cpu / _median_per_cpu(c["paths"][UNDERLAY][streams])})
    return rows


def _rtt_rows(results: dict) -> list[dict]:
    rows = []
    for c in results["clusters"]:
        for path, rounds in c["rtt_ms"].items():
            per_round = [statistics.median(r) for r in rounds]
            base = statistics.median(statistics.median(r) for r in c["rtt_ms"][UNDERLAY])
            rows.append({"plane": c["label"], "path": path, "rtt_ms": statistics.median(per_round),
                         "underlay_ms": base, "all": [x for r in rounds for x in r]})
    return rows


def report(results: dict, plots_dir: str) -> str:
    rows = summary(results)
    rtts = _rtt_rows(results)
    cfg = results["settings"]
    lines = [
        "## Data plane: pod-to-pod throughput and latency",
        "",
        f"TCP throughput with iperf3 (`-J`, {cfg['seconds']} s after {cfg['omit']} s omitted, "
        f"1 stream and `-P 4`) and ping RTT ({PING_COUNT} pings 20 ms apart), median of "
        f"{cfg['rounds']} rounds, for each data plane in its own cluster (real etcd, two node "
        "namespaces running `flanneletted`, pods wired by the installed `flannelette`). "
        "Paths: *underlay* node1 -> node2 over eth0 (the baseline, measured in the same "
        "cluster, interleaved round by round), *two nodes* pod on node1 -> pod on node2, "
        "*same node* two pods on node1's bridge. Ratio = median / underlay median.",
        "",
        "The underlay is veth pairs through a bridge namespace on one kernel: no NIC, no "
        "wire, no NIC offload engine. Every byte is copied by the same CPUs (2 cores, shared "
        "with other work) that run both iperf3 ends, so the figures measure CPU cost per byte "
        "of each path, not link speed; a real NIC at 10-25 Gbit/s would hide most of the "
        "difference in a single stream.",
        "",
        "*Gbit/CPU-s* is the throughput per CPU busy in the two iperf3 processes (the "
        "softirq work of veth, bridge, routing and VXLAN runs mostly in their context), its "
        "ratio the same against the underlay: the cost of a byte, which other load on the "
        "machine disturbs far less than the throughput.",
        "",
        "| data plane | path | streams | Gbit/s | underlay Gbit/s | ratio | goal | met "
        "| Gbit/CPU-s | its ratio | retransmits | MSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = f">= {r['goal']:.0%}" if r["goal"] else ""
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['plane']} | {r['path']} | {r['streams']} | {r['gbps']:.2f} | "
                     f"{r['underlay_gbps']:.2f} | {r['ratio']:.0%} | {goal} | {met} | "
                     f"{r['per_cpu']:.1f} | {r['per_cpu_ratio']:.0%} | {r['retransmits']:.0f} | "
                     f"{r['mss']} |")
    lines += ["", "| data plane | path | RTT ms (median) | underlay ms | ratio |", "|---|---|---|---|---|"]
    for r in rtts:
        lines.append(f"| {r['plane']} | {r['path']} | {r['rtt_ms']:.3f} | {r['underlay_ms']:.3f} | "
                     f"{r['rtt_ms'] / r['underlay_ms']:.2f} |")
    lines += ["", "**MTU, end to end.** A don't-fragment ping of the largest payload (MTU - 28) "
              "must pass and one byte more must fail; the IP fragmentation counters "
              f"({', '.join(FRAG_COUNTERS)}) of every node and pod must not move over the whole "
              "run; iperf3's MSS is the pod MTU - 52 (IP, TCP and timestamp option).", "",
              "| data plane | path | MTU | largest DF ping | one byte more | fragments in run |",
              "|---|---|---|---|---|---|"]
    for c in results["clusters"]:
        frags = sum(v for counters in c["fragments"].values() for v in counters.values())
        for path, m in c["mtu"].items():
            lines.append(f"| {c['label']} | {path} | {m['mtu']} | "
                         f"{m['largest_payload']} B: {'passes' if m['largest_passes'] else '**fails**'} | "
                         f"{'fails' if m['one_more_fails'] else '**passes**'} ({m['one_more_said']}) | "
                         f"{frags} |")
    lines += ["", *_goal_lines(rows), "", *_vxlan_lines(results, rows), ""]
    lines += _plots(rows, rtts, plots_dir)
    return "\n".join(lines) + "\n"


def _goal_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["met"] is False:
            out.append(f"- Goal not met: {r['plane']}, {r['streams']} stream(s): {r['ratio']:.0%} "
                       f"of the underlay's throughput (goal {r['goal']:.0%}); per CPU "
                       f"{r['per_cpu_ratio']:.0%} of the underlay's.")
        elif r["met"]:
            out.append(f"- Goal met: {r['plane']}, {r['streams']} stream(s): {r['ratio']:.0%} "
                       f"(goal {r['goal']:.0%}); per CPU {r['per_cpu_ratio']:.0%}.")
    return out


def _row(rows: list[dict], plane: str, streams: int, path: str = TWO_NODES) -> dict | None:
    return next((r for r in rows if (r["plane"], r["streams"], r["path"]) == (plane, streams, path)),
                None)


def _vxlan_lines(results: dict, rows: list[dict]) -> list[str]:
    """What decides vxlan's cost here: the devices' offloads, and the uplink experiment."""
    out = ["**What vxlan costs here, and the outer UDP checksum.** Over veth the VTEP hands "
           "whole TSO/GSO packets (~64 KB) to the uplink, which passes them on unsegmented "
           "(`tx-udp_tnl-segmentation` and `tx-udp_tnl-csum-segmentation` on); the receiving "
           "VTEP decapsulates them whole. So vxlan adds per-packet work (encapsulation, one "
           "more route and FDB lookup, decapsulation, a second forwarding step), not "
           "per-byte work: compare its Gbit/CPU-s ratio with host-gw's and DirectRouting's. "
           "A NIC that can segment VXLAN but not VXLAN *with UDP checksums* cannot take those "
           "packets while the VTEP asks for checksums (the kernel's default): the stack then "
           "segments in software. The rows marked *uplink without tunnel-checksum "
           "segmentation* turn that feature off on both nodes' eth0 (ethtool) and measure "
           "the default VTEP against one made with the Backend option `UDPChecksum: false` "
           "(RFC 7348 allows a zero IPv4 UDP checksum; the inner TCP checksum still covers "
           "the payload)."]
    for c in results["clusters"]:
        if c.get("skipped"):
            out.append(f"- Not measured: {'; '.join(c['skipped'])}.")
    suffix = ", " + NO_TUNNEL_CSUM_OFFLOAD["label"]
    for streams in STREAMS:
        default, off = (_row(rows, "vxlan" + suffix, streams),
                        _row(rows, "vxlan UDPChecksum=false" + suffix, streams))
        if default and off:
            out.append(f"- {streams} stream(s), {NO_TUNNEL_CSUM_OFFLOAD['label']}: default VTEP "
                       f"{default['gbps']:.2f} Gbit/s ({default['ratio']:.0%} of the underlay, "
                       f"{default['per_cpu']:.1f} Gbit/CPU-s), `UDPChecksum: false` "
                       f"{off['gbps']:.2f} Gbit/s ({off['ratio']:.0%}, {off['per_cpu']:.1f} "
                       f"Gbit/CPU-s): x{off['gbps'] / default['gbps']:.1f}.")
    for c in results["clusters"]:
        if c.get("vtep"):
            out.append(f"- {c['label']} VTEP as created: `{c['vtep']}`")
    vxlan = next((c for c in results["clusters"] if c["label"] == "vxlan"), None)
    if vxlan and vxlan.get("offloads"):
        for dev, features in vxlan["offloads"].items():
            if features:
                shown = ", ".join(f"{k} {v}" for k, v in features.items())
                out.append(f"- offloads, {dev}: {shown}")
    return out


def _short(plane: str, path: str) -> str:
    return f"{plane.replace(', ' + NO_TUNNEL_CSUM_OFFLOAD['label'], ' (no tunnel-csum offload)')}: {path}"


def _plots(rows: list[dict], rtts: list[dict], plots_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    mine = {streams: [r for r in rows if r["streams"] == streams and r["path"] != UNDERLAY]
            for streams in STREAMS}
    height = 1.2 + 0.45 * max(len(v) for v in mine.values())
    fig, axes = plt.subplots(1, len(STREAMS), figsize=(13, height), sharey=True)
    for ax, streams in zip(axes, STREAMS):
        ys = range(len(mine[streams]))
        ax.barh(ys, [r["gbps"] for r in mine[streams]], color="tab:blue")
        ax.scatter([r["underlay_gbps"] for r in mine[streams]], ys, marker="|", s=300,
                   color="tab:red", zorder=3, label="underlay, same cluster")
        for y, r in zip(ys, mine[streams]):
            ax.text(r["gbps"], y, f" {r['ratio']:.0%}", va="center", fontsize=8)
        ax.set_yticks(list(ys), [_short(r["plane"], r["path"]) for r in mine[streams]], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("TCP Gbit/s (median)")
        ax.set_title(f"{streams} stream{'s' if streams > 1 else ''}")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(plots_dir, "dataplane-throughput.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.4 * len(rtts)))
    ys = range(len(rtts))
    p10 = [statistics.quantiles(r["all"], n=10)[0] for r in rtts]
    p90 = [statistics.quantiles(r["all"], n=10)[-1] for r in rtts]
    med = [statistics.median(r["all"]) for r in rtts]
    ax.barh(ys, med, color="tab:blue",
            xerr=[[m - lo for m, lo in zip(med, p10)], [hi - m for m, hi in zip(med, p90)]])
    ax.set_yticks(list(ys), [_short(r["plane"], r["path"]) for r in rtts], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ping RTT ms: median of all pings, bars p10-p90")
    fig.tight_layout()
    fig.savefig(os.path.join(plots_dir, "dataplane-rtt.png"), dpi=110)
    plt.close(fig)
    return ["![TCP throughput per data plane and streams](benchmarks/dataplane-throughput.png)",
            "", "![Ping RTT per data plane](benchmarks/dataplane-rtt.png)"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    plots = argv[argv.index("--plots") + 1] if "--plots" in argv else "docs/benchmarks"
    saved = os.path.join(plots, "results-dataplane.json")
    if "--report-only" in argv:
        with open(saved) as f:
            results = json.load(f)
    else:
        results = measure(quick)
        os.makedirs(plots, exist_ok=True)
        with open(saved, "w") as f:
            json.dump(results, f, indent=1)
    print(report(results, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
