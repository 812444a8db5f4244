"""Real flanneletted processes in netns "nodes" on a small underlay, for daemon tests.

    underlay netns (tests/support/underlay.py): br0 10.77.0.254/24, etcd listens there
        |-- node 1: eth0 10.77.0.11/24, default via .254, runs `python -m daemon.main`
        |-- node 2: eth0 10.77.0.12/24 ...

Everything is inside `flt-` namespaces and a temporary directory; `close()` removes it all.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Optional

import pytest

from conf.flannel import SubnetEnv, load_subnet_env
from tests.support.etcd import EtcdServer
from tests.support.netns import NetNS
from tests.support.procs import stop_group
from tests.support.underlay import Underlay as SharedUnderlay

ETCD_IP = "10.77.0.254"
PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
HEALTHZ_PORT = 8471
VXLAN_CONFIG = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
ALLOC_CONFIG = '{"Network": "10.244.0.0/16", "Backend": {"Type": "alloc"}}'


def healthz_get(ns: NetNS, path: str) -> tuple[int, str]:
    """(HTTP status, body) of the daemon's health server inside ns (status 0: no answer)."""
    out = ns.run("curl", "-s", "-m", "5", "-w", "\n%{http_code}",
                 f"http://127.0.0.1:{HEALTHZ_PORT}{path}", check=False).stdout.decode()
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def daemon_metric(ns: NetNS, name: str, **labels: str) -> float:
    """One value of the daemon's /metrics inside ns (0 when absent)."""
    wanted = "flannelette_" + name
    if labels:
        wanted += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in healthz_get(ns, "/metrics")[1].splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(what: str, predicate, timeout: float = 20.0, node: "Optional[DaemonNode]" = None):
    """Poll predicate until truthy (returned); fail naming `what`, with the node's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{node.log()}" if node else ""))


@pytest.fixture
def underlay(request) -> Iterator["Underlay"]:
    """An underlay, always removed; with plain etcd holding the test module's ETCD_CONFIG
    when it sets one. Import it into a test module to use it."""
    u = Underlay()
    try:
        config = getattr(request.module, "ETCD_CONFIG", None)
        if config is not None:
            u.start_etcd().put(PREFIX + "/config", config)
        yield u
    finally:
        u.close()


class Underlay(SharedUnderlay):
    """The shared underlay on 10.77.0.0/24 (fd77::/64) with the switch at ETCD_IP (the nodes'
    default gateway), plus the nodes' directory and etcd."""

    def __init__(self):
        super().__init__(network="10.77.0.0/24", network6="fd77::/64", switch_host=254,
                         first_host=11, default_via_switch=True)
        assert self.switch_ip == ETCD_IP
        self.dir = tempfile.mkdtemp(prefix="flt-daemon-")
        self.nodes: list[DaemonNode] = []
        self.etcd: Optional[EtcdServer] = None

    def start_etcd(self, etcd: Optional[EtcdServer] = None) -> EtcdServer:
        self.etcd = (etcd or EtcdServer(self.ns, ETCD_IP)).start()
        return self.etcd

    def node(self, ipv6: bool = False) -> "DaemonNode":
        node = DaemonNode(self, len(self.nodes) + 1, ipv6)
        self.nodes.append(node)
        return node

    def python(self, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run Python (this venv, this repo) inside the underlay namespace."""
        return self.ns.run(sys.executable, "-c", code, *args, timeout=timeout, check=False)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self.etcd is not None:
            self.etcd.close()
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DaemonNode:
    def __init__(self, underlay: Underlay, index: int, ipv6: bool = False):
        self.underlay, self.index = underlay, index
        self.ns = NetNS()
        attachment = underlay.attach(self.ns, ipv6=ipv6)
        self.ip, self.ipv6 = attachment.ip, attachment.ip6
        self.dir = os.path.join(underlay.dir, f"node{index}")
        os.makedirs(self.dir)
        self.subnet_file = os.path.join(self.dir, "subnet.env")
        self.state_dir = os.path.join(self.dir, "state")
        self.cni_socket = os.path.join(self.dir, "cni.sock")
        self.log_path = os.path.join(self.dir, "flanneletted.log")
        self.proc: Optional[subprocess.Popen] = None

    def argv(self, *extra: str) -> list[str]:
        etcd = self.underlay.etcd
        endpoint = etcd.endpoint if etcd else f"http://{ETCD_IP}:2379"
        return [sys.executable, "-m", "daemon.main", "--etcd-endpoints", endpoint,
                "--iface", "eth0", "--subnet-file", self.subnet_file, "--state-dir", self.state_dir,
                "--cni-socket", "", "--healthz-ip", "127.0.0.1", "--healthz-port", str(HEALTHZ_PORT),
                "--reconcile-interval", "1", *extra]

    def start(self, *extra: str) -> "DaemonNode":
        with open(self.log_path, "ab") as log:
            self.proc = self.ns.popen(*self.argv(*extra), stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 30.0, since: float = 0.0) -> SubnetEnv:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"flanneletted on node{self.index} exited:\n{self.log()}")
            try:
                if os.stat(self.subnet_file).st_mtime >= since and self.http("/readyz")[0] == 200:
                    return load_subnet_env(self.subnet_file)
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node{self.index} not ready in {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flanneletted on node{self.index} still runs:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        if self.proc is None:
            return None
        code, self.proc = stop_group(self.proc, sig, 15), None
        return code

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return "(no log)"

    def http(self, path: str) -> tuple[int, str]:
        return healthz_get(self.ns, path)

    def metric(self, name: str, **labels: str) -> float:
        return daemon_metric(self.ns, name, **labels)

    def ip_json(self, *args: str) -> list[dict]:
        out = self.ns.out("ip", "-j", *args)
        return json.loads(out) if out.strip() else []

    def bridge_json(self, *args: str) -> list[dict]:
        out = self.ns.out("bridge", "-j", *args)
        return json.loads(out) if out.strip() else []

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        self.ns.close()
