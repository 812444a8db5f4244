"""What the daemon benchmarks share: a cluster of real flanneletted nodes on a real etcd,
fake peer leases, an rtnetlink monitor, an etcd driver, and the process's memory and CPU.

    with bench_cluster() as cluster:            # unique netns prefix, all removed at the end
        etcd = cluster.start_etcd(); seed(cluster, n)
        node = cluster.node().start(...)

Two helper processes run from this file (`python -m tests.bench.daemon_tools <role>`):
  monitor  inside a node's netns: our own rtnetlink socket (decoded here with struct,
           independently of the daemon's codec), one line per route / neighbour / FDB event
           on the cluster network, stamped with CLOCK_MONOTONIC at receipt; with --count N it
           prints only the moment each kind first reaches N distinct objects.
  driver   inside the underlay netns: reads `put <i>` / `del <i>` / `mod <i>` lines on stdin,
           writes peer lease i into etcd and prints the monotonic time before and after the
           request (same clock as the monitor: CLOCK_MONOTONIC is system-wide).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The underlay is 10.77.0.0/24: the pod network must not contain it (peers' public IPs
# 172.16.0.0/12 are outside it too). 10.0.0.0/10 holds 16384 /24 subnets.
NETWORK = "10.0.0.0/10"
CONFIG = json.dumps({"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "vxlan"}})


# ---------------------------------------------------------------- fake peer leases

def peer(i: int) -> tuple[str, str, str, str]:
    """(subnet key, subnet, public IP, VtepMAC) of fake peer i (0 <= i < 16000)."""
    third, fourth = i // 250, i % 250 + 1
    subnet = f"10.{third}.{fourth}.0/24"
    return (subnet.replace("/", "-"), subnet, f"172.{16 + third // 250}.{third % 250}.{fourth}",
            f"02:42:00:{third >> 8:02x}:{third & 0xff:02x}:{fourth:02x}")


def peer_value(i: int, vni: int = 1) -> str:
    _, _, ip, mac = peer(i)
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": vni, "VtepMAC": mac}})


# ---------------------------------------------------------------- the cluster

@contextlib.contextmanager
def bench_cluster(tag: str = "c") -> Iterator:
    """An underlay (tests.support.flanneletted) whose namespaces carry a prefix unique to
    this run (`flt-<tag><hex>-`); on exit every namespace, process and directory it made is
    gone, leftovers with that prefix included."""
    from tests.support import netns
    from tests.support.flanneletted import Underlay

    old, prefix = netns.PREFIX, f"flt-{tag}{secrets.token_hex(2)}-"
    netns.PREFIX = prefix
    underlay = None
    try:
        underlay = Underlay()
        yield underlay
    finally:
        try:
            if underlay is not None:
                underlay.close()
        finally:
            netns.PREFIX = old
            out = netns.sh("ip", "netns", "list", check=False).stdout.decode()
            for line in out.splitlines():
                if line.startswith(prefix):
                    netns.sh("ip", "netns", "delete", line.split()[0], check=False)


@contextlib.contextmanager
def daemon_tree(tree: str = "") -> Iterator[None]:
    """Daemons started inside run `python -m daemon.main` from `tree` (another checkout, for
    a before/after comparison in one run); "" is this one."""
    if not tree:
        yield
        return
    here = os.getcwd()
    os.chdir(tree)  # `python -m` puts the working directory first on sys.path
    try:
        yield
    finally:
        os.chdir(here)


SEED = r"""
import sys
sys.path.insert(0, sys.argv[4])
import pyetcd
from tests.bench.daemon_tools import peer, peer_value
endpoint, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = endpoint.rsplit("/", 1)[-1].split(":")
c = pyetcd.client(host=host, port=int(port), timeout=30)
lease = c.lease(3600)
t = c.transactions
ops = []
for i in range(n):
    ops.append(t.put(f"{prefix}/subnets/{peer(i)[0]}", peer_value(i), lease=lease.id))
    if len(ops) == 100 or i == n - 1:
        c.transaction(compare=[], success=ops, failure=[])
        ops = []
"""


def seed(underlay, n: int) -> None:
    """Put the network config and peers 0..n-1 (one shared etcd lease, TTL 1 h)."""
    from tests.support.flanneletted import PREFIX
    underlay.etcd.put(PREFIX + "/config", CONFIG)
    if n:
        done = underlay.python(SEED, underlay.etcd.endpoint, PREFIX, str(n), ROOT, timeout=600)
        if done.returncode:
            raise RuntimeError(f"seeding etcd failed:\n{done.stderr.decode()}")


def wait_until(what: str, predicate, node=None, timeout: float = 60.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node is not None and (node.proc is None or node.proc.poll() is not None):
            raise RuntimeError(f"flanneletted exited while waiting for {what}:\n{node.log()}")
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}" + (f":\n{node.log()}" if node else ""))


def kernel_counts(node, dev: str = "flannel.1") -> tuple[int, int, int]:
    """(routes, permanent neighbours, FDB entries with a dst) on dev, read with iproute2."""
    script = (f"ip -o route show dev {dev} | wc -l; "
              f"ip -o neigh show dev {dev} nud permanent | wc -l; "
              f"bridge fdb show dev {dev} | grep -c ' dst ' || true")
    out = node.ns.run("sh", "-c", script, check=False).stdout.decode().split()
    return tuple(int(x) for x in out) if len(out) == 3 else (0, 0, 0)


# ---------------------------------------------------------------- memory and CPU of a process

def smaps_rollup(pid: int) -> dict[str, float]:
    """RSS, PSS and anonymous memory (and the rest of smaps_rollup) in MiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) / 1024
    return {"rss": out["Rss"], "pss": out["Pss"], "anon": out["Anonymous"],
            "pss_anon": out.get("Pss_Anon", float("nan")), "pss_file": out.get("Pss_File", float("nan"))}


def peak_rss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def daemon_pid(node) -> int:
    """The flanneletted process itself (node.proc is `ip netns exec`, which execs it)."""
    return node.proc.pid


# ---------------------------------------------------------------- the monitor (runs in a node)

RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x4, 0x40
AF_BRIDGE, NUD_PERMANENT, RTPROT_KERNEL, RT_TABLE_MAIN = 7, 0x80, 2, 254
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BBHiHBB")
_RTA = struct.Struct("=HH")


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(buf, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def decode(buf: bytes) -> Iterator[tuple[str, str, str]]:
    """(new|del, route|neigh|fdb, key) for each cluster object in one netlink datagram:
    routes by destination, permanent IPv4 neighbours by address, FDB entries by MAC."""
    off = 0
    while off + 16 <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if length < 16:
            break
        body, end = off + 16, off + length
        off += (length + 3) & ~3
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            family, dst_len, _, _, table, proto, _, _, _ = _RTMSG.unpack_from(buf, body)
            a = _attrs(buf, body + _RTMSG.size, end)
            if family != socket.AF_INET or proto == RTPROT_KERNEL or 1 not in a:
                continue
            if table != RT_TABLE_MAIN and a.get(15) != struct.pack("=I", RT_TABLE_MAIN):
                continue
            if a[1][0] != 10:  # the cluster network is inside 10/8
                continue
            yield ("new" if mtype == RTM_NEWROUTE else "del", "route",
                   f"{socket.inet_ntoa(a[1])}/{dst_len}")
        elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
            family, _, _, _ifindex, state, _, _ = _NDMSG.unpack_from(buf, body)
            a = _attrs(buf, body + _NDMSG.size, end)
            kind = "new" if mtype == RTM_NEWNEIGH else "del"
            if family == AF_BRIDGE and 1 in a and 2 in a:  # an FDB entry with a remote dst
                yield kind, "fdb", a[2].hex(":")
            elif family == socket.AF_INET and 1 in a and (state & NUD_PERMANENT or kind == "del"):
                # (deleting a permanent neighbour reports it FAILED, without lladdr)
                dst = socket.inet_ntoa(a[1])
                if dst.startswith("10."):
                    yield kind, "neigh", dst


def monitor(count: int) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: a join is 15000 events
    sock.bind((0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
    print(json.dumps({"ready": time.monotonic()}), flush=True)
    seen: dict[str, set] = {"route": set(), "neigh": set(), "fdb": set()}
    while True:
        try:
            buf = sock.recv(1 << 20)
        except OSError as e:  # ENOBUFS: events lost; say so, the caller judges
            print(json.dumps({"overflow": time.monotonic(), "error": str(e)}), flush=True)
            continue
        now = time.monotonic()
        for op, kind, key in decode(buf):
            if count:
                if op == "new" and key not in seen[kind]:
                    seen[kind].add(key)
                    if len(seen[kind]) == count:
                        print(json.dumps({"all": kind, "t": now}), flush=True)
            else:
                print(f"{now:.6f} {op} {kind} {key}", flush=True)


class Monitor:
    """The monitor process in `ns`; lines are handed to `on_line` from a reader thread."""

    def __init__(self, ns, count: int = 0, on_line=None):
        self.lines: list[str] = []
        self.on_line = on_line
        self.proc = ns.popen(sys.executable, "-m", "tests.bench.daemon_tools", "monitor",
                             str(count), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
        first = self.proc.stdout.readline()
        if b"ready" not in first:
            self.proc.kill()
            raise RuntimeError(f"rtnetlink monitor did not start: {first!r}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


# ---------------------------------------------------------------- the etcd driver (in the underlay)

def driver(endpoint: str, prefix: str) -> None:
    import pyetcd
    host, port = endpoint.rsplit("/", 1)[-1].split(":")
    c = pyetcd.client(host=host, port=int(port), timeout=30)
    lease = c.lease(3600)
    c.get(prefix + "/config")  # the connection is up before the first timed request
    print("ready", flush=True)
    for line in sys.stdin:
        op, i = line.split()
        key = f"{prefix}/subnets/{peer(int(i))[0]}"
        before = time.monotonic()
        if op == "put":
            c.put(key, peer_value(int(i)), lease=lease.id)
        elif op == "mod":  # the same peer with another VNI: a changed lease
            c.put(key, peer_value(int(i), vni=2), lease=lease.id)
        else:
            c.delete(key)
        print(f"{before:.6f} {time.monotonic():.6f}", flush=True)


def etcd_watch(endpoint: str, prefix: str) -> None:
    """Print `<monotonic time> <put|del> <subnet key>` for each lease event etcd sends."""
    import pyetcd
    host, port = endpoint.rsplit("/", 1)[-1].split(":")
    c = pyetcd.client(host=host, port=int(port), timeout=30)
    events, cancel = c.watch_prefix(prefix + "/subnets/")
    print("ready", flush=True)
    for ev in events:
        now = time.monotonic()
        op = "del" if isinstance(ev, pyetcd.events.DeleteEvent) else "put"
        print(f"{now:.6f} {op} {ev.key.decode().rsplit('/', 1)[-1]}", flush=True)


class EtcdWatch:
    """etcd_watch in `ns`: how soon any client there hears of a change (the floor)."""

    def __init__(self, ns, endpoint: str, on_line):
        from tests.support.flanneletted import PREFIX
        self.on_line = on_line
        self.proc = ns.popen(sys.executable, "-m", "tests.bench.daemon_tools", "etcd-watch",
                             endpoint, PREFIX, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
        if self.proc.stdout.readline().strip() != b"ready":
            self.proc.kill()
            raise RuntimeError("etcd watch did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.on_line(raw.decode().strip())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


class Driver:
    def __init__(self, underlay):
        from tests.support.flanneletted import PREFIX
        self.proc = underlay.ns.popen(sys.executable, "-m", "tests.bench.daemon_tools", "driver",
                                      underlay.etcd.endpoint, PREFIX, cwd=ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
        if self.proc.stdout.readline().strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"etcd driver did not start: {self.proc.stderr.read().decode()}")

    def send(self, op: str, i: int) -> tuple[float, float]:
        """(monotonic time before the request, after its answer)."""
        self.proc.stdin.write(f"{op} {i}\n".encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            raise RuntimeError(f"etcd driver failed: {self.proc.stderr.read().decode()}")
        return float(line[0]), float(line[1])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of samples; nan when empty."""
    if not samples:
        return float("nan")
    xs = sorted(samples)
    return xs[min(len(xs), max(1, math.ceil(q / 100 * len(xs)))) - 1]


def machine_load() -> float:
    return os.getloadavg()[0]


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "monitor":
        monitor(int(sys.argv[2]))
    elif role == "driver":
        driver(sys.argv[2], sys.argv[3])
    elif role == "etcd-watch":
        etcd_watch(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown role {role!r}")
