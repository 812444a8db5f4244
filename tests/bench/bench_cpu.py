"""Benchmark: the daemon's CPU time per hour with 5000 leases, at rest and under churn.

One node runs the real flanneletted (vxlan, CNI socket on, the default 10 s tick) in a cluster
of 5000 leases, in namespaces unique to the run. After the join has settled, its CPU time
(utime + stime of every thread, /proc/<pid>/stat) is read over a measured window:
  - at rest: no lease changes (the tick, lease renewal, the health server, grpc keepalives);
  - churn: a driver in the underlay makes 10 lease changes per second (new peers put, then
    changed, then deleted, in turn), each one a separate etcd request.
CPU seconds per hour = CPU seconds in the window / window length * 3600.
Baseline in the same run and window: the CPU time etcd itself spends (the server every
change goes through), as a yardstick for what the churn costs.
"""
from __future__ import annotations

import os
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.bench.daemon_tools import (Driver, bench_cluster, cpu_seconds, daemon_tree,
                                      kernel_counts, seed, wait_until)

LEASES = 5000
RATE = 10.0  # lease changes per second
FIRST_CHURN_PEER = 12000  # churn peers live apart from the cluster's (10.48.x.0/24 and up)


def window(pid: int, etcd_pid: int, seconds: float, work=None) -> dict:
    """CPU seconds of the daemon and of etcd over `seconds` (with `work` running meanwhile)."""
    stop = threading.Event()
    done: dict = {}
    thread = None
    if work is not None:
        thread = threading.Thread(target=lambda: done.update(work(stop)), daemon=True)
    d0, e0, t0 = cpu_seconds(pid), cpu_seconds(etcd_pid), time.monotonic()
    if thread is not None:
        thread.start()
    time.sleep(seconds)
    stop.set()
    if thread is not None:
        thread.join(30)
    d1, e1, t1 = cpu_seconds(pid), cpu_seconds(etcd_pid), time.monotonic()
    elapsed = t1 - t0
    return {"seconds": elapsed, "daemon_cpu_s": d1 - d0, "etcd_cpu_s": e1 - e0,
            "daemon_cpu_s_per_hour": (d1 - d0) / elapsed * 3600,
            "etcd_cpu_s_per_hour": (e1 - e0) / elapsed * 3600, **done}


def churn(driver: Driver):
    """10 changes per second until stopped: put peer k, change it, delete it, next peer."""
    def work(stop: threading.Event) -> dict:
        k, changes, late = 0, 0, 0
        start = time.monotonic()
        while not stop.is_set():
            i = FIRST_CHURN_PEER + k // 3
            driver.send(("put", "mod", "del")[k % 3], i)
            k += 1
            changes += 1
            due = start + changes / RATE
            pause = due - time.monotonic()
            if pause > 0:
                stop.wait(pause)
            else:
                late += 1
        return {"changes": changes, "changes_per_s": changes / (time.monotonic() - start),
                "late": late}
    return work


def measure(quick: bool) -> dict:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces)")
    return run(30.0 if quick else 120.0) | {"quick": quick}


def run(seconds: float, tree: str = "") -> dict:
    """Both windows of `seconds`; `tree`: the daemon from another checkout (before/after)."""
    with bench_cluster("cu") as underlay:
        etcd = underlay.start_etcd()
        seed(underlay, LEASES)
        with daemon_tree(tree):
            node = underlay.node().start("--cni-socket", os.path.join(underlay.dir, "cni.sock"),
                                         "--reconcile-interval", "10")
        node.wait_ready(120)
        wait_until(f"{LEASES} peers programmed", lambda: min(kernel_counts(node)) >= LEASES,
                   node, 300, 0.5)
        time.sleep(5)  # the join's last runs and trims
        pid = node.proc.pid
        load = [os.getloadavg()[0]]
        rest = window(pid, etcd.proc.pid, seconds)
        driver = Driver(underlay)
        try:
            busy = window(pid, etcd.proc.pid, seconds, churn(driver))
        finally:
            driver.close()
        load.append(os.getloadavg()[0])
        if node.proc.poll() is not None:
            raise RuntimeError(f"flanneletted exited:\n{node.log()}")
        log = open(node.log_path, errors="replace").read()
        runs = log.count("msg=reconciled")
    return {"leases": LEASES, "window_s": seconds, "rest": rest, "churn": busy,
            "rate": RATE, "load": load, "logged_reconciles": runs}


def report(results: dict, plots_dir: str) -> str:
    from tests.bench.plots import pyplot, save
    plt = pyplot()

    rest, churn_ = results["rest"], results["churn"]
    lines = ["## Daemon CPU: seconds per hour with 5000 leases", "",
             f"The real flanneletted (vxlan, CNI socket on, 10 s tick) in a cluster of "
             f"{results['leases']} leases; utime + stime of all its threads from /proc/<pid>/stat over "
             f"a {results['window_s']:.0f} s window, scaled to an hour. *At rest*: no lease changes. "
             f"*Churn*: {results['rate']:.0f} lease changes per second (a new peer put, changed, "
             "deleted, in turn), each a separate etcd request. Baseline: etcd's own CPU time in the "
             "same window." + (" Quick mode: 30 s windows." if results["quick"] else ""), "",
             "| load | daemon CPU s/hour | etcd CPU s/hour | daemon / etcd | daemon share of one CPU |",
             "|---|---|---|---|---|"]
    for name, w in (("at rest", rest), (f"{churn_.get('changes_per_s', 0):.1f} changes/s", churn_)):
        ratio = w["daemon_cpu_s"] / w["etcd_cpu_s"] if w["etcd_cpu_s"] else float("nan")
        lines.append(f"| {name} | {w['daemon_cpu_s_per_hour']:.0f} | {w['etcd_cpu_s_per_hour']:.0f} | "
                     f"{ratio:.2f}x | {w['daemon_cpu_s_per_hour'] / 36:.2f} % |")
    lines += ["", f"The churn made {churn_.get('changes', 0)} changes ({churn_.get('late', 0)} sent late: "
              "the driver could not keep the pace). Load average at start and end: "
              f"{results['load'][0]:.1f} -> {results['load'][-1]:.1f}."]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ["at rest", f"{results['rate']:.0f} changes/s"]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [rest["daemon_cpu_s_per_hour"], churn_["daemon_cpu_s_per_hour"]],
           width=0.4, label="flanneletted")
    ax.bar([x + 0.2 for x in xs], [rest["etcd_cpu_s_per_hour"], churn_["etcd_cpu_s_per_hour"]],
           width=0.4, label="etcd (baseline)")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("CPU seconds per hour")
    ax.set_title(f"CPU with {results['leases']} leases")
    ax.legend(fontsize=8)
    lines += ["", f"![daemon CPU seconds per hour]({save(fig, plots_dir, 'cpu.png')})", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    res = measure("--quick" in sys.argv)
    print(report(res, os.environ.get("PLOTS_DIR", "/tmp/flt-bench-plots")))
