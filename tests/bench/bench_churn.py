"""Benchmark: pod churn on one node, the fast path against the reference chain.

    python -m tests.bench churn [--quick]

250 pods (quick: the same 250) are added 8 at a time, then deleted 8 at a time, through the
installed `flannelette` and its warm fast-path server, and through /usr/lib/cni/bridge +
host-local, each candidate on its own node netns (tests/bench/bench_plugin.Candidate) with the
same pod namespaces. Reported: pods/s for ADD and for DEL, the ratio to the reference, and
what is left afterwards: reservation files in the IPAM store, attachment state files,
veths on the node (all must be 0).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tests.bench.bench_plugin import NETWORK, Candidate, _call
from tests.support.netns import NetNS

PODS = 250
PARALLEL = 8
CANDIDATES = ("reference", "fastpath")


def worker(spec: dict) -> dict:
    """ADD every pod, then DEL every pod, `parallel` at a time; runs in the node netns."""
    exe, cni_path, pods = spec["exe"], spec["cni_path"], spec["pods"]
    config = spec["config"].encode()
    out = {}
    with ThreadPoolExecutor(spec["parallel"]) as pool:
        for verb in ("ADD", "DEL"):
            start = time.perf_counter()
            list(pool.map(lambda i, verb=verb: _call(exe, verb, config, f"churn-{i}", pods[i], cni_path),
                          range(len(pods))))
            out[verb] = time.perf_counter() - start
    return out


def _reservations(store: str) -> list[str]:
    """Files of the IPAM store named as an address: one per address held."""
    left = []
    for name in os.listdir(store) if os.path.isdir(store) else []:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue
        left.append(name)
    return left


def _leftovers(cand: Candidate) -> dict:
    state = os.path.join(cand.state_dir, NETWORK) if cand.state_dir else ""
    veths = cand.node.out("ip", "-o", "link", "show", "type", "veth").splitlines()
    return {"reservations": _reservations(os.path.join(cand.ipam_dir, NETWORK)),
            "state_files": sorted(n for n in os.listdir(state) if n.endswith(".json")) if os.path.isdir(state) else [],
            "veths": len(veths)}


def _steps_in_order(records: list[dict]) -> dict[str, list[dict[str, float]]]:
    """verb -> one {step: ms} per successful request, in the order the server finished them."""
    out: dict[str, list[dict[str, float]]] = {}
    for rec in records:
        if rec["status"] == 0 and rec["container_id"].startswith("churn-"):
            steps: dict[str, float] = {}
            for step, seconds in rec["steps"]:
                steps[step] = round(steps.get(step, 0.0) + seconds * 1000, 3)
            out.setdefault(rec["command"], []).append(steps)
    return out


def _growth(requests: list[dict[str, float]], first: int = 50) -> list[str]:
    """Per step, the p50 over the first and the last `first` requests: what grows with the pods."""
    early, late = requests[:first], requests[-first:]

    def median(rows: list[dict[str, float]], step: str) -> float:
        values = sorted(r.get(step, 0.0) for r in rows)
        return values[len(values) // 2] if values else 0.0
    lines = []
    for step in requests[0]:
        a, b = median(early, step), median(late, step)
        lines.append(f"| {step} | {a:.2f} | {b:.2f} |")
    total = lambda rows: sorted(sum(r.values()) for r in rows)[len(rows) // 2]  # noqa: E731
    lines.append(f"| all steps | {total(early):.2f} | {total(late):.2f} |")
    return lines


def measure(quick: bool) -> dict:
    if os.geteuid() != 0:
        raise RuntimeError("the churn benchmark needs root (network namespaces)")
    root = tempfile.mkdtemp(prefix="flt-bench-P-churn-")
    pods = [NetNS() for _ in range(PODS)]
    results: dict = {"pods": PODS, "parallel": PARALLEL, "candidates": {}}
    try:
        for name in CANDIDATES:
            cand = Candidate(name, os.path.join(root, name), step_times=name == "fastpath")
            try:
                res = cand.run_worker("tests.bench.bench_churn", {"pods": [p.path for p in pods],
                                                                  "parallel": PARALLEL})
                res["left"] = _leftovers(cand)
            finally:
                cand.close()
            if name == "fastpath":
                res["steps"] = _steps_in_order(cand.step_records())
            print(f"# churn {name}: ADD {res['ADD']:.1f} s, DEL {res['DEL']:.1f} s", flush=True)
            results["candidates"][name] = res
    finally:
        for pod in pods:
            pod.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


def report(results: dict, plots_dir: str) -> str:
    from tests.bench.plots import pyplot, save
    pods, cands = results["pods"], results["candidates"]
    lines = ["## Pod churn: 250 pods, 8 at a time", "",
             f"{pods} pods added {results['parallel']} at a time, then deleted {results['parallel']} at a time, "
             "on one node netns per candidate (same pod namespaces); wall time from the first call to the last "
             "exit. Afterwards the IPAM store, the attachment state and the node's veths are counted.", "",
             "| candidate | ADD pods/s | DEL pods/s | reservations left | state files left | veths left |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, res in cands.items():
        left = res["left"]
        lines.append(f"| {name} | {pods / res['ADD']:.1f} | {pods / res['DEL']:.1f} | {len(left['reservations'])} "
                     f"| {len(left['state_files']) if name != 'reference' else '-'} | {left['veths']} |")
    if "reference" in cands and "fastpath" in cands:
        ref, fast = cands["reference"], cands["fastpath"]
        lines += ["", f"Fast path over reference, pods/s: ADD {ref['ADD'] / fast['ADD']:.2f}x, "
                      f"DEL {ref['DEL'] / fast['DEL']:.2f}x (above 1: faster)."]
    clean = all(not r["left"]["reservations"] and not r["left"]["state_files"] and not r["left"]["veths"]
                for r in cands.values())
    lines.append("Store empty at the end for every candidate: " + ("yes" if clean else "NO: " + "; ".join(
        f"{n}: {r['left']}" for n, r in cands.items())))
    for verb, requests in cands.get("fastpath", {}).get("steps", {}).items():
        if len(requests) < 100:
            continue
        lines += ["", f"Fast-path server steps of {verb} (ms, p50), the first 50 requests against the last 50 "
                      "(ADD fills the node, DEL empties it): what grows with the number of pods.", "",
                  f"| {verb} step | first 50 | last 50 |", "| --- | ---: | ---: |"]
        lines += _growth(requests)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(cands)
    for k, verb in enumerate(("ADD", "DEL")):
        ax.bar([i + k * 0.4 for i in range(len(names))], [pods / cands[n][verb] for n in names], 0.4, label=verb)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names)
    ax.set_ylabel("pods/s")
    ax.legend()
    lines += ["", f"![pods/s per candidate]({save(fig, plots_dir, 'churn.png')})"]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        json.dump(worker(json.load(sys.stdin)), sys.stdout)
        sys.exit(0)
    sys.exit("run it as `python -m tests.bench churn [--quick]`")
