"""Benchmark (not a test): ADD then DEL latency of the installed plugin against the reference chain.

    make bench            (= .venv/bin/python -m tests.bench)
    .venv/bin/python -m tests.bench --n 200 --inproc-n 30 --parallel 8

Candidates, each on its own node netns with bridge cni0 and subnet 10.244.1.0/24 (MTU
1450, hairpin, default route), all in the same run on the same pods:
- reference: /usr/lib/cni/bridge + host-local (two Go execs per call)
- fastpath: the installed `flannelette` (packaging/launcher.c + shim) -> warm `python -m daemon.fastpath.server`
- fastpath-script: the shim as a `#!python -IS` stub script -> the same warm server
- inproc: the installed `flannelette` with `daemonSocket: ""` (cold: imports the whole stack)
Per candidate: start-up alone (VERSION), a round trip the daemon rejects at once (no
netlink work; for the reference, an env error), N sequential ADDs, N sequential DELs,
then N ADDs and N DELs `--parallel` at once. Each call is timed from spawn to exit by a worker process that runs inside the
candidate's node netns (so no `ip netns exec` per call). Prints p50/p99 per phase and the
p50 ratio to the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.install import FastPathServer, installed_bin_dir
from tests.support.netns import NetNS

REFERENCE_BIN = "/usr/lib/cni"
NETWORK = "flt-bench"
SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
PHASES = ("start-up", "round-trip", "ADD", "DEL", "ADD-par", "DEL-par")
WARMUP = 3
FLOOR_N = 50
GOALS = {"ADD": (2.0, 1.5), "DEL": (1.5, 1.25)}  # fast-path p50 ratio: must, goal
COLD_GOAL = 0.3


# ---------------------------------------------------------------- worker (inside a node netns)

def _call(exe: str, command: str, config: bytes, cid: str, netns: str, cni_path: str,
          ifname: str = "eth0", expect: int = 0) -> float:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path}
    start = time.perf_counter()
    proc = subprocess.run([exe], input=config, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        raise RuntimeError(f"{command} {cid} failed ({proc.returncode}): {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
    return elapsed


def worker(spec: dict) -> dict:
    """Time every call of one candidate; runs in the candidate's node netns."""
    exe, config, cni_path, pods = spec["exe"], spec["config"].encode(), spec["cni_path"], spec["pods"]

    def one(command: str, i: int) -> float:
        return _call(exe, command, config, f"bench-{i}", pods[i], cni_path)

    for i in range(WARMUP):
        one("ADD", i)
        one("DEL", i)
    n = spec["n"]
    floors = min(n, FLOOR_N)
    out = {
        # Start-up alone (VERSION never reaches a daemon), then a request the daemon
        # rejects at once (no CNI_IFNAME): the shim's round trip without any netlink work.
        "start-up": [_call(exe, "VERSION", config, "", "", cni_path) for _ in range(floors)],
        "round-trip": [_call(exe, "ADD", config, "x", pods[0], cni_path, ifname="", expect=1)
                       for _ in range(floors)],
        "ADD": [one("ADD", i) for i in range(n)],
        "DEL": [one("DEL", i) for i in range(n)],
    }
    with ThreadPoolExecutor(spec["parallel"]) as pool:
        start = time.perf_counter()
        out["ADD-par"] = list(pool.map(lambda i: one("ADD", i), range(n)))
        out["ADD-par-wall"] = time.perf_counter() - start
        start = time.perf_counter()
        out["DEL-par"] = list(pool.map(lambda i: one("DEL", i), range(n)))
        out["DEL-par-wall"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- orchestration

def _reference_config() -> dict:
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "bridge": "cni0", "isGateway": True,
            "isDefaultGateway": True, "hairpinMode": True, "mtu": 1450,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                     "routes": [{"dst": "10.244.0.0/16"}]}}


class Candidate:
    def __init__(self, name: str, root: str, n: int):
        self.name, self.root, self.n = name, root, n
        self.node = NetNS()
        self.server: FastPathServer | None = None
        os.makedirs(root, exist_ok=True)
        if name == "reference":
            self.exe, self.cni_path = os.path.join(REFERENCE_BIN, "bridge"), REFERENCE_BIN
            conf = _reference_config()
            conf["ipam"]["dataDir"] = os.path.join(root, "ipam")
        else:
            form = "script" if name == "fastpath-script" else "frozen"
            self.cni_path = installed_bin_dir(os.path.join(root, "install"), form=form)
            self.exe = os.path.join(self.cni_path, "flannelette")
            subnet_file = os.path.join(root, "subnet.env")
            with open(subnet_file, "w") as f:
                f.write(SUBNET_ENV)
            socket_path = os.path.join(root, "run", "cni.sock") if name.startswith("fastpath") else ""
            conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "flannelette", "subnetFile": subnet_file,
                    "dataDir": os.path.join(root, "state"), "daemonSocket": socket_path,
                    "ipam": {"type": "flannelette-ipam", "dataDir": os.path.join(root, "ipam")}}
            if socket_path:
                self.server = FastPathServer(socket_path, self.node.name, log_path=os.path.join(root, "server.log"),
                                             log_level=os.environ.get("BENCH_SERVER_LOG", "WARNING"))
        self.config = json.dumps(conf)

    def run(self, pods: list[str], parallel: int) -> dict:
        spec = {"exe": self.exe, "config": self.config, "cni_path": self.cni_path, "pods": pods,
                "n": self.n, "parallel": parallel}
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, sys.executable, "-m", "tests.bench.bench_plugin",
                               "--worker"], input=json.dumps(spec).encode(), capture_output=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {proc.stderr.decode()[-2000:]}")
        return json.loads(proc.stdout)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.node.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def report(results: dict[str, dict], n: dict[str, int], parallel: int) -> str:
    lines = [f"{'candidate':<16} {'phase':<10} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'x ref p50':>9}"]
    ref = results.get("reference")
    for name, res in results.items():
        for phase in PHASES:
            values = res[phase]
            p50 = _pct(values, 0.5)
            ratio = f"{p50 / _pct(ref[phase], 0.5):.2f}" if ref else "-"
            lines.append(f"{name:<16} {phase:<10} {len(values):>4} {p50:>8.1f} {_pct(values, 0.99):>8.1f} "
                         f"{statistics.mean(values) * 1000:>8.1f} {ratio:>9}")
        lines.append(f"{'':<16} {parallel}-way wall: ADD {res['ADD-par-wall']:.2f} s, DEL {res['DEL-par-wall']:.2f} s "
                     f"for {n[name]} pods")
    if ref and "fastpath" in results:
        fast = results["fastpath"]
        lines.append("")
        for phase, (must, goal) in GOALS.items():
            for suffix in ("", "-par"):
                r = _pct(fast[phase + suffix], 0.5) / _pct(ref[phase + suffix], 0.5)
                verdict = "meets goal" if r <= goal else "within limit" if r <= must else "OVER LIMIT"
                lines.append(f"fast path {phase + suffix:<8} p50 = {r:.2f}x reference "
                             f"(limit {must}x, goal {goal}x): {verdict}")
    if "inproc" in results:
        cold = _pct(results["inproc"]["ADD"], 0.5) / 1000
        lines.append(f"cold in-process ADD p50 = {cold:.3f} s (goal < {COLD_GOAL} s): "
                     f"{'meets goal' if cold < COLD_GOAL else 'OVER GOAL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """BENCH_SERVER_LOG=DEBUG and --keep leave each request's in-daemon time in <tmp>/*/server.log."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="pods per phase (default 200)")
    parser.add_argument("--inproc-n", type=int, default=30,
                        help="pods per phase for the cold in-process candidate (about 1 s a call; default 30)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--candidates", default="reference,fastpath,fastpath-script,inproc")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (server logs)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        json.dump(worker(json.load(sys.stdin)), sys.stdout)
        return 0
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 1
    names = [c for c in args.candidates.split(",") if c]
    counts = {name: (min(args.inproc_n, args.n) if name == "inproc" else args.n) for name in names}
    root = tempfile.mkdtemp(prefix="flt-bench-")
    pods = [NetNS() for _ in range(max(counts.values()) + WARMUP)]
    results: dict[str, dict] = {}
    try:
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
              f"python {sys.version.split()[0]}", flush=True)
        for name in names:
            cand = Candidate(name, os.path.join(root, name), counts[name])
            try:
                started = time.monotonic()
                results[name] = cand.run([p.path for p in pods], args.parallel)
                print(f"# {name}: done in {time.monotonic() - started:.1f} s", flush=True)
            finally:
                cand.close()
        print(f"# load average {os.getloadavg()[0]:.2f} at end")
        print(report(results, counts, args.parallel))
    finally:
        for pod in pods:
            pod.close()
        if args.keep:
            print(f"# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
