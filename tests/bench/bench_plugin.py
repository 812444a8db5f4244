"""Benchmark: CNI ADD, CHECK and DEL latency of the installed plugin against the reference chain.

    python -m tests.bench plugin [--quick]

Candidates, each on its own node netns with bridge cni0 and subnet 10.244.1.0/24 (MTU
1450, hairpin, default route), all in the same run on the same pod namespaces:
- reference: /usr/lib/cni/bridge + host-local (two Go execs per call)
- fastpath: the installed `flannelette` (packaging/launcher.c + shim) -> warm `python -m daemon.fastpath.server`
- fastpath-script: the shim as a `#!python -IS` stub script -> the same warm server
- inproc: the installed `flannelette` with `daemonSocket: ""` (cold: imports the whole stack)
Per candidate: start-up alone (VERSION), a round trip the daemon rejects at once (no netlink
work; for the reference, an env error), N sequential ADDs, CHECKs (prevResult = that ADD's
result) and DELs, then the same N at a time `PARALLEL` at once. Each call is timed from spawn
to exit by a worker process inside the candidate's node netns (no `ip netns exec` per call).
For the breakdown of one ADD, the fast-path server records its named steps (--step-times)
and the reference's host-local is also timed alone, exec'd as bridge execs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import shutil
from concurrent.futures import ThreadPoolExecutor

from tests.support.install import FastPathServer, installed_bin_dir
from tests.support.netns import NetNS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_BIN = "/usr/lib/cni"
NETWORK = "flt-bench"
SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
CANDIDATES = ("reference", "fastpath", "fastpath-script", "inproc")
VERBS = ("ADD", "CHECK", "DEL")
PHASES = ("start-up", "round-trip", *VERBS, *(v + "-par" for v in VERBS))
PARALLEL = 8
WARMUP = 3
FLOOR_N = 50  # start-up and round-trip samples
SIZES = {False: (200, 30), True: (100, 10)}  # quick -> (pods per phase, pods for the cold inproc)
GOALS = {"ADD": 1.0, "DEL": 0.5, "ADD-par": 1.0}  # fast-path p50 over the reference's p50
COLD_GOAL = 0.3  # seconds, a cold in-process ADD
# Steps of the daemon's work that are kernel calls (netlink, setns) rather than Python.
KERNEL_STEPS = {"open pod netns", "check pod ifname", "ensure bridge", "setup veth", "configure pod iface",
                "remove veth", "verify links and addresses"}


# ---------------------------------------------------------------- worker (inside a node netns)

def _call(exe: str, command: str, config: bytes, cid: str, netns: str, cni_path: str,
          ifname: str = "eth0", expect: int = 0) -> tuple[float, bytes]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path}
    start = time.perf_counter()
    proc = subprocess.run([exe], input=config, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        raise RuntimeError(f"{command} {cid} failed ({proc.returncode}): {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
    return elapsed, proc.stdout


def _with_prev_result(config: dict, add_output: bytes) -> bytes:
    return json.dumps({**config, "prevResult": json.loads(add_output)}).encode()


def worker(spec: dict) -> dict:
    """Time every call of one candidate; runs in the candidate's node netns."""
    exe, cni_path, pods, n = spec["exe"], spec["cni_path"], spec["pods"], spec["n"]
    conf = json.loads(spec["config"])
    config = spec["config"].encode()

    def one(command: str, tag: str, i: int, stdin: bytes = config) -> tuple[float, bytes]:
        return _call(exe, command, stdin, f"{tag}-{i}", pods[i], cni_path)

    for i in range(WARMUP):
        one("ADD", "warm", i)
        one("DEL", "warm", i)
    floors = min(n, FLOOR_N)
    out: dict = {
        # Start-up alone (VERSION never reaches a daemon), then a request the daemon
        # rejects at once (no CNI_IFNAME): the shim's round trip without any netlink work.
        "start-up": [_call(exe, "VERSION", config, "", "", cni_path)[0] for _ in range(floors)],
        "round-trip": [_call(exe, "ADD", config, "x", pods[0], cni_path, ifname="", expect=1)[0]
                       for _ in range(floors)],
    }
    added = [one("ADD", "s", i) for i in range(n)]
    out["ADD"] = [t for t, _ in added]
    out["CHECK"] = [one("CHECK", "s", i, _with_prev_result(conf, added[i][1]))[0] for i in range(n)]
    out["DEL"] = [one("DEL", "s", i)[0] for i in range(n)]
    with ThreadPoolExecutor(spec["parallel"]) as pool:
        for verb in VERBS:
            start = time.perf_counter()
            if verb == "CHECK":
                timed = list(pool.map(lambda i: one("CHECK", "p", i, _with_prev_result(conf, added[i][1])),
                                      range(n)))
            else:
                timed = list(pool.map(lambda i, verb=verb: one(verb, "p", i), range(n)))
            out[f"{verb}-par-wall"] = time.perf_counter() - start
            out[f"{verb}-par"] = [t for t, _ in timed]
            if verb == "ADD":
                added = timed
    if spec.get("host_local"):  # the reference's IPAM alone, exec'd as bridge execs it
        hl = spec["host_local"]
        out["host-local start-up"] = [_call(hl, "VERSION", config, "", "", cni_path)[0] for _ in range(floors)]
        out["host-local ADD"], out["host-local DEL"] = [], []
        for i in range(floors):
            out["host-local ADD"].append(_call(hl, "ADD", config, f"h-{i}", pods[i], cni_path)[0])
        for i in range(floors):
            out["host-local DEL"].append(_call(hl, "DEL", config, f"h-{i}", pods[i], cni_path)[0])
    return out


# ---------------------------------------------------------------- orchestration

def reference_config(data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "bridge": "cni0", "isGateway": True,
            "isDefaultGateway": True, "hairpinMode": True, "mtu": 1450,
            # The route names its gateway: bridge CHECK compares a gateway-less route with the one
            # ADD installed through the gateway and fails (containernetworking-plugins 1.1.1).
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                     "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}], "dataDir": data_dir}}


class Candidate:
    """One candidate's node netns, install and (for the fast path) server."""

    def __init__(self, name: str, root: str, step_times: bool = False):
        self.name, self.root = name, root
        self.node = NetNS()
        self.server: FastPathServer | None = None
        self.step_file = os.path.join(root, "steps.json") if step_times else None
        self.ipam_dir = os.path.join(root, "ipam")
        self.state_dir = ""
        os.makedirs(root, exist_ok=True)
        if name == "reference":
            self.exe, self.cni_path = os.path.join(REFERENCE_BIN, "bridge"), REFERENCE_BIN
            conf = reference_config(self.ipam_dir)
        else:
            form = "script" if name == "fastpath-script" else "frozen"
            self.cni_path = installed_bin_dir(os.path.join(root, "install"), form=form)
            self.exe = os.path.join(self.cni_path, "flannelette")
            subnet_file = os.path.join(root, "subnet.env")
            with open(subnet_file, "w") as f:
                f.write(SUBNET_ENV)
            self.state_dir = os.path.join(root, "state")
            socket_path = os.path.join(root, "run", "cni.sock") if name.startswith("fastpath") else ""
            conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "flannelette", "subnetFile": subnet_file,
                    "dataDir": self.state_dir, "daemonSocket": socket_path,
                    "ipam": {"type": "flannelette-ipam", "dataDir": self.ipam_dir}}
            if socket_path:
                self.server = FastPathServer(socket_path, self.node.name, log_path=os.path.join(root, "server.log"),
                                             log_level=os.environ.get("BENCH_SERVER_LOG", "WARNING"),
                                             step_times=self.step_file)
        self.config = json.dumps(conf)

    def run_worker(self, module: str, spec: dict) -> dict:
        spec = {"exe": self.exe, "config": self.config, "cni_path": self.cni_path, **spec}
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, sys.executable, "-m", module, "--worker"],
                              input=json.dumps(spec).encode(), capture_output=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {proc.stderr.decode()[-2000:]}")
        return json.loads(proc.stdout)

    def step_records(self) -> list[dict]:
        """The server's per-request steps; call after close()."""
        if not self.step_file or not os.path.exists(self.step_file):
            return []
        with open(self.step_file) as f:
            return json.load(f)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.node.close()


def _steps_by_verb(records: list[dict], tag: str) -> dict[str, dict[str, list[float]]]:
    """verb -> step -> durations (ms) of the successful requests of containers `<tag>-*`."""
    out: dict[str, dict[str, list[float]]] = {}
    for rec in records:
        if rec["status"] != 0 or not rec["container_id"].startswith(tag + "-"):
            continue
        steps = out.setdefault(rec["command"], {})
        total = 0.0
        for name, seconds in rec["steps"]:
            steps.setdefault(name, []).append(round(seconds * 1000, 3))
            total += seconds
        steps.setdefault("total in the daemon", []).append(total * 1000)
    return out


def measure(quick: bool) -> dict:
    if os.geteuid() != 0:
        raise RuntimeError("the plugin benchmark needs root (network namespaces)")
    n, inproc_n = SIZES[quick]
    counts = {name: (inproc_n if name == "inproc" else n) for name in CANDIDATES}
    root = tempfile.mkdtemp(prefix="flt-bench-P-")
    pods = [NetNS() for _ in range(n)]
    results: dict = {"n": counts, "parallel": PARALLEL, "quick": quick, "candidates": {}}
    try:
        for name in CANDIDATES:
            cand = Candidate(name, os.path.join(root, name), step_times=name == "fastpath")
            try:
                started = time.monotonic()
                spec = {"pods": [p.path for p in pods], "n": counts[name], "parallel": PARALLEL}
                if name == "reference":
                    spec["host_local"] = os.path.join(REFERENCE_BIN, "host-local")
                res = cand.run_worker("tests.bench.bench_plugin", spec)
                print(f"# plugin {name}: done in {time.monotonic() - started:.1f} s", flush=True)
            finally:
                cand.close()
            if name == "fastpath":
                res["steps"] = _steps_by_verb(cand.step_records(), "s")
            results["candidates"][name] = res
    finally:
        for pod in pods:
            pod.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


# ---------------------------------------------------------------- report

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of seconds, in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def _ms(values_ms: list[float], q: float = 0.5) -> float:
    return pct([v / 1000 for v in values_ms], q)


def ratios(results: dict) -> dict[str, float]:
    ref, fast = results["candidates"]["reference"], results["candidates"]["fastpath"]
    return {phase: pct(fast[phase], 0.5) / pct(ref[phase], 0.5) for phase in PHASES}


def _latency_table(results: dict) -> list[str]:
    cands = results["candidates"]
    ref = cands.get("reference")
    lines = ["| candidate | phase | n | p50 ms | p90 ms | p99 ms | p50 / reference |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, res in cands.items():
        for phase in PHASES:
            values = res[phase]
            ratio = f"{pct(values, 0.5) / pct(ref[phase], 0.5):.2f}x" if ref else "-"
            lines.append(f"| {name} | {phase} | {len(values)} | {pct(values, 0.5):.1f} | {pct(values, 0.9):.1f} "
                         f"| {pct(values, 0.99):.1f} | {ratio} |")
    return lines


def _breakdown(results: dict) -> list[str]:
    cands = results["candidates"]
    fast, ref = cands["fastpath"], cands["reference"]
    steps = fast.get("steps", {}).get("ADD", {})
    if not steps:
        return ["(the fast-path server recorded no steps)"]
    start_fast, start_ref = pct(fast["start-up"], 0.5), pct(ref["start-up"], 0.5)
    rt = pct(fast["round-trip"], 0.5)
    daemon_total = _ms(steps["total in the daemon"])
    add_fast, add_ref = pct(fast["ADD"], 0.5), pct(ref["ADD"], 0.5)
    hl_add, hl_start = pct(ref["host-local ADD"], 0.5), pct(ref["host-local start-up"], 0.5)
    lines = ["| part of one ADD (p50, ms) | flannelette fast path | reference |", "| --- | ---: | ---: |",
             f"| start-up alone (VERSION: the launcher starts the interpreter and the shim / a Go binary) "
             f"| {start_fast:.2f} | {start_ref:.2f} (bridge) |",
             f"| start-up and a round trip to the daemon, which rejects the request at once (no CNI_IFNAME; "
             f"ADD, CHECK and DEL are forwarded by the launcher in C, no interpreter) / bridge's env error "
             f"| {rt:.2f} | {pct(ref['round-trip'], 0.5):.2f} |"]
    kernel = 0.0
    for name, values in steps.items():
        if name == "total in the daemon":
            continue
        median = _ms(values)
        where = " (kernel: netlink/setns)" if name in KERNEL_STEPS else ""
        if where:
            kernel += median
        lines.append(f"| daemon: {name}{where} | {median:.2f} | |")
    lines += [f"| daemon: all steps (p50 of the per-request sums) | {daemon_total:.2f} | |",
              f"| of which kernel steps (sum of their p50s) | {kernel:.2f} | |",
              f"| IPAM: host-local exec'd alone (its own start-up {hl_start:.2f}) | (in `ipam add`) | {hl_add:.2f} |",
              f"| bridge's own work: bridge ADD minus host-local ADD | | {add_ref - hl_add:.2f} |",
              f"| client side, not in the daemon: ADD minus daemon total | {add_fast - daemon_total:.2f} | |",
              f"| **whole ADD** | **{add_fast:.2f}** | **{add_ref:.2f}** |"]
    return lines


def _plot(results: dict, plots_dir: str) -> str:
    from tests.bench.plots import ecdf, pyplot, save
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey=True)
    for row, suffix in enumerate(("", "-par")):
        for col, verb in enumerate(VERBS):
            ax = axes[row][col]
            for name, res in results["candidates"].items():
                ecdf(ax, [v * 1000 for v in res[verb + suffix]], name)
            ax.set_xscale("log")
            ax.set_title(f"{verb} " + (f"{results['parallel']} at once" if suffix else "sequential"))
            if row:
                ax.set_xlabel("ms per call (spawn to exit)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("share of calls")
    axes[1][0].set_ylabel("share of calls")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save(fig, plots_dir, "plugin-latency.png")


def report(results: dict, plots_dir: str) -> str:
    cands = results["candidates"]
    n = results["n"]
    lines = ["## CNI latency: ADD, CHECK, DEL against Go bridge + host-local", "",
             f"Each candidate on its own node netns, the same pod namespaces; {n['reference']} pods per phase "
             f"({n['inproc']} for the cold in-process candidate){' (quick mode)' if results['quick'] else ''}; "
             f"`-par` phases run {results['parallel']} calls at once. Each call is timed from spawn to exit. "
             "reference = `/usr/lib/cni/bridge` + `host-local`; fastpath = the installed `flannelette` "
             "(C launcher + shim) and a warm fast-path server; fastpath-script = the shim as a Python script; "
             "inproc = the installed `flannelette` with the fast path off (cold, whole stack).", ""]
    lines += _latency_table(results)
    if "reference" in cands and "fastpath" in cands:
        r = ratios(results)
        lines += ["", "Goals (fast-path p50 over the reference p50, same run):", ""]
        for phase, goal in GOALS.items():
            verdict = "met" if r[phase] <= goal else "NOT met"
            lines.append(f"- {phase}: {r[phase]:.2f}x (goal <= {goal}x): {verdict}")
        for phase in ("ADD", "DEL"):
            wall_f, wall_r = cands["fastpath"][f"{phase}-par-wall"], cands["reference"][f"{phase}-par-wall"]
            lines.append(f"- {phase} {results['parallel']} at once, wall time for {n['fastpath']} pods: "
                         f"{wall_f:.2f} s against {wall_r:.2f} s ({wall_f / wall_r:.2f}x)")
    if "inproc" in cands:
        cold = pct(cands["inproc"]["ADD"], 0.5) / 1000
        lines.append(f"- cold in-process ADD p50 {cold:.3f} s (goal < {COLD_GOAL} s): "
                     f"{'met' if cold < COLD_GOAL else 'NOT met'}")
    lines += ["", f"![ECDF of call latency per phase and candidate]({_plot(results, plots_dir)})", "",
              "### Where one ADD's time goes", "",
              "Fast path: the server's named steps (`--step-times`; handlers in cni_plugin/handlers.py), "
              "p50 over the sequential ADDs; start-up and round trip from the phases above. Reference: "
              "host-local exec'd alone in the same netns with the same config, subtracted from bridge's ADD. "
              "p50s do not add up exactly.", ""]
    lines += _breakdown(results)
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        json.dump(worker(json.load(sys.stdin)), sys.stdout)
        sys.exit(0)
    sys.exit("run it as `python -m tests.bench plugin [--quick]`")
