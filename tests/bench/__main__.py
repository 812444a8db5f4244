"""`python -m tests.bench` (`make bench`): run the benchmarks, write docs/benchmarks.md.

    python -m tests.bench                    every benchmark, full mode
    python -m tests.bench --quick            every benchmark, quick mode (`make bench-quick`)
    python -m tests.bench plugin [--quick]   one benchmark; only its section of the report changes
    python -m tests.bench --report-only      rebuild docs/benchmarks.md from the saved results

Each benchmark module exposes `measure(quick) -> dict` and `report(results, plots_dir) -> str`.
The raw results of each go to docs/benchmarks/results-<name>.json together with the machine,
the load and the command of the run that made them; docs/benchmarks.md is rebuilt from every
saved results file, so a one-benchmark run leaves the other sections as they were. A module
missing from this checkout is reported as not run.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO, "docs", "benchmarks.md")
PLOTS = os.path.join(REPO, "docs", "benchmarks")

# name -> (module, what it measures), in run order
BENCHMARKS = {
    "plugin": ("tests.bench.bench_plugin", "CNI latency ADD/CHECK/DEL vs Go bridge + host-local"),
    "churn": ("tests.bench.bench_churn", "250 pods 8 at a time, pods/s vs the reference chain"),
    "convergence": ("tests.bench.bench_convergence", "lease put/delete -> kernel objects on a peer"),
    "scale": ("tests.bench.bench_scale", "joining 1000..10000 leases: time, RSS/PSS/anon"),
    "cpu": ("tests.bench.bench_cpu", "daemon CPU s/hour at rest and at 10 changes/s"),
    "dataplane": ("tests.bench.bench_dataplane", "iperf3 + ping vs the underlay: vxlan, DirectRouting, host-gw"),
}


def results_path(name: str) -> str:
    return os.path.join(PLOTS, f"results-{name}.json")


# ---------------------------------------------------------------- the machine and the run

def _output(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout or proc.stderr).strip()


def _first_line(text: str) -> str:
    return text.splitlines()[0].strip() if text else "not installed"


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go_plugins": _output(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"])
        or "not installed",
        "etcd": _first_line(_output(["etcd", "--version"])),
        "iperf3": _first_line(_output(["iperf3", "--version"])),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def git_commit() -> str:
    commit = _output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]) or "unknown"
    # The benchmark's own output (docs/benchmarks*) does not make the measured code dirty.
    dirty = _output(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "--", ".",
                     ":(exclude)docs/benchmarks", ":(exclude)docs/benchmarks.md"])
    return commit + ("+uncommitted changes" if dirty else "")


# ---------------------------------------------------------------- running

def _load(name: str):
    """The module, or the reason it cannot run here."""
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None, "not run: this checkout has no " + module_name.replace(".", "/") + ".py"
        return None, f"not run: {module_name} cannot be imported ({e})"
    if not (hasattr(module, "measure") and hasattr(module, "report")):
        return None, f"not run: {module_name} has no measure()/report() yet"
    return module, ""


def run_one(name: str, quick: bool, command: str) -> bool:
    module, why = _load(name)
    if module is None:
        print(f"## {name}: {why}", flush=True)
        return True
    print(f"## {name} ({'quick' if quick else 'full'}) ...", flush=True)
    meta = {"benchmark": name, "mode": "quick" if quick else "full", "command": command,
            "commit": git_commit(), "machine": machine(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_start": [round(x, 2) for x in os.getloadavg()]}
    began = time.monotonic()
    try:
        results = module.measure(quick)
    except Exception:  # one benchmark failing must not cost the others their run
        traceback.print_exc()
        print(f"## {name}: FAILED; its saved results (if any) stay as they were", flush=True)
        return False
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["seconds"] = round(time.monotonic() - began, 1)
    os.makedirs(PLOTS, exist_ok=True)
    with open(results_path(name), "w") as f:
        json.dump({"meta": meta, "results": results}, f)
        f.write("\n")
    print(f"## {name}: done in {meta['seconds']:.0f} s", flush=True)
    return True


# ---------------------------------------------------------------- the report

def _saved(name: str):
    try:
        with open(results_path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _header(saved: dict[str, dict]) -> str:
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`python -m tests.bench`); `make bench-quick` runs fewer samples.",
             "Every ratio compares with a baseline measured in the same run on the same machine.",
             "Raw results: `docs/benchmarks/results-<name>.json`; rebuild this page from them with",
             "`python -m tests.bench --report-only`.", ""]
    latest = max(saved.values(), key=lambda s: s["meta"]["started"], default=None)
    if latest is not None:
        m = latest["meta"]["machine"]
        lines += ["Machine of the latest run: "
                  f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB memory, kernel {m['kernel']}; "
                  f"python {m['python']}, Go CNI plugins (Debian containernetworking-plugins) {m['go_plugins']}, "
                  f"{m['etcd']}, {m['iperf3']}.", ""]
    lines += ["| benchmark | what | run (UTC) | mode | commit | load avg start -> end | command |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, (_module, what) in BENCHMARKS.items():
        s = saved.get(name)
        if s is None:
            lines.append(f"| {name} | {what} | not run | | | | |")
            continue
        meta = s["meta"]
        load = f"{meta['load_start'][0]:.2f} -> {meta['load_end'][0]:.2f}"
        lines.append(f"| {name} | {what} | {meta['started']} | {meta['mode']} | {meta['commit']} | {load} "
                     f"| `{meta['command']}` |")
    return "\n".join(lines)


def write_report() -> str:
    saved = {name: s for name in BENCHMARKS if (s := _saved(name)) is not None}
    sections = [_header(saved)]
    for name, (_module, what) in BENCHMARKS.items():
        if name not in saved:
            module, why = _load(name)
            sections.append(f"## {name}\n\n{why or 'not run yet: no saved results'} ({what}).")
            continue
        module, why = _load(name)
        if module is None:
            sections.append(f"## {name}\n\nSaved results exist but the module cannot report: {why}.")
            continue
        try:
            sections.append(module.report(saved[name]["results"], PLOTS).rstrip())
        except Exception as e:
            traceback.print_exc()
            sections.append(f"## {name}\n\nThe report of the saved results failed: {type(e).__name__}: {e}.")
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write("\n\n".join(sections) + "\n")
    return DOC


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run ({', '.join(BENCHMARKS)}); "
                        "default all")
    parser.add_argument("--quick", action="store_true", help="fewer samples: a whole run under 15 minutes")
    parser.add_argument("--report-only", action="store_true", help="rebuild docs/benchmarks.md from saved results")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    ok = True
    if not args.report_only:
        command = "python -m tests.bench " + shlex.join(argv)
        for name in args.names or list(BENCHMARKS):
            ok &= run_one(name, args.quick, command.strip())
    print(f"wrote {os.path.relpath(write_report(), REPO)}")
    return 0 if ok else 1



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
