"""Netns "nodes" on an underlay, each able to run a data plane backend in-process.

`Underlay` is the shared one (tests/support/underlay.py) with bridge `br0`
(192.168.50.0/24) and, when asked, a second segment `br1` (192.168.60.0/24)
behind a router netns, so a node there is reachable only through a gateway.
`NodeWorker` is a forked child that entered the node's namespace (setns) and
holds a Backend; the test calls module-level functions in it. No etcd needed:
tests hand Lease objects over directly.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import traceback

import pytest

from tests.support.netns import NetNS
from tests.support.underlay import Underlay as SharedUnderlay

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _serve(ns_path: str, conn) -> None:
    _setns(ns_path)
    state: dict = {}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        fn, args = msg
        try:
            conn.send((True, fn(state, *args)))
        except BaseException as e:  # hand the failure to the test, with its traceback
            conn.send((False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class NodeWorker:
    def __init__(self, ns: NetNS):
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(ns.path, child), daemon=True)
        self.proc.start()

    def call(self, fn, *args, timeout: float = 60):
        self.conn.send((fn, args))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{fn.__name__} did not answer in {timeout}s")
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"in node worker: {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


class Node:
    def __init__(self, ns: NetNS, ip: str, ip6: str):
        self.ns, self.ip, self.ip6 = ns, ip, ip6
        self.worker: NodeWorker | None = None

    def start_worker(self) -> NodeWorker:
        self.worker = NodeWorker(self.ns)
        return self.worker


class Underlay(SharedUnderlay):
    """Nodes on 192.168.50.0/24 (fd50::/64), numbered from .10; `add_segment` adds the routed
    192.168.60.0/24 (fd60::/64) behind a router netns."""

    def __init__(self):
        super().__init__(network="192.168.50.0/24", network6="fd50::/64",
                         routed_network="192.168.60.0/24", routed_network6="fd60::/64",
                         first_host=10)
        self.nodes: list[Node] = []

    def add_segment(self) -> None:
        """A second, routed segment br1: its nodes are reached through 192.168.50.1."""
        self.add_router()

    def add_node(self, bridge: str = "br0", mtu: int = 1500) -> Node:
        ns = NetNS()
        att = self.attach(ns, routed=bridge == "br1", ipv6=True, mtu=mtu, forwarding=True)
        node = Node(ns, att.ip, att.ip6)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            if node.worker:
                node.worker.close()
            node.ns.close()
        super().close()


@pytest.fixture
def underlay():
    """An Underlay torn down after the test (import it into a test module to use it)."""
    u = Underlay()
    try:
        yield u
    finally:
        u.close()


# ---------------------------------------------------------------- functions run in a worker


def make_backend(state: dict, netconf_json: str, iface: str, state_dir: str,
                 public_ip: str | None = None) -> int:
    from conf.flannel import load_network_config
    from daemon.dataplane.backends import make_backend as make
    from daemon.dataplane.node import discover_node

    node = discover_node(iface, public_ip, None)
    state["backend"] = make(load_network_config(netconf_json), node, state_dir)
    return state["backend"].mtu


def backend_call(state: dict, method: str, *args):
    return getattr(state["backend"], method)(*args)


def programmed(state: dict, leases) -> list[bool]:
    return [state["backend"].programmed(lease) for lease in leases]


def start_watch(state: dict) -> None:
    import threading

    woken = state["woken"] = threading.Event()
    state["watch"] = state["backend"].watch_kernel(woken.set)


def wait_woken(state: dict, timeout: float) -> bool:
    """Whether the kernel watch called back within `timeout`; clears the flag."""
    woken = state["woken"]
    hit = woken.wait(timeout)
    woken.clear()
    return hit


# ---------------------------------------------------------------- a cluster of backends


def start_nodes(underlay: Underlay, bridges: list[str], netconf: dict, state_root: str,
                ) -> list[Node]:
    """One node per entry of `bridges`, each with a prepared and configured backend,
    lease 10.244.<i+1>.0/24 (and fc00:0:0:<i+1>::/64 with EnableIPv6) and a `cni0`
    holding the subnet's .1 as a pod-like ping target."""
    import json

    from conf.flannel import Lease

    nodes = [underlay.add_node(b) for b in bridges]
    dual = netconf.get("EnableIPv6", False)
    for i, node in enumerate(nodes, start=1):
        w = node.start_worker()
        w.call(make_backend, json.dumps(netconf), "eth0", f"{state_root}/node{i}")
        attrs = w.call(backend_call, "prepare")
        node.lease = Lease(subnet=f"10.244.{i}.0/24", attrs=attrs,
                           ipv6_subnet=f"fc00:0:0:{i}::/64" if dual else None)
        w.call(backend_call, "configure", node.lease)
        node.ns.run("ip", "link", "add", "cni0", "type", "bridge")
        node.ns.run("ip", "addr", "add", f"10.244.{i}.1/24", "dev", "cni0")
        if dual:
            node.ns.run("ip", "addr", "add", f"fc00:0:0:{i}::1/64", "dev", "cni0", "nodad")
        node.ns.run("ip", "link", "set", "cni0", "up")
    return nodes


def reconcile(node: Node, nodes: list[Node]):
    return node.worker.call(backend_call, "reconcile", node.lease, [n.lease for n in nodes])


def lines(node: Node, *cmd: str) -> set[str]:
    return {line.strip() for line in node.ns.out(*cmd).splitlines() if line.strip()}


def ping(node: Node, src: str, dst: str) -> bool:
    six = ["-6"] if ":" in dst else []
    return node.ns.run("ping", *six, "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst, check=False).returncode == 0
