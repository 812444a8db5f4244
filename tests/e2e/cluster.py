"""A flannelette cluster on one machine: netns nodes, a real etcd, real daemons, real pods.

    with Cluster(ClusterSpec(backend="vxlan", nodes=3)) as c:
        a, b = c.add_pod(c.nodes[0]), c.add_pod(c.nodes[1])
        a.ping(b.ip)

Each node is a network namespace plugged into the underlay (see topology.py) running one
`flanneletted` with its own subnet file, state dir, CNI socket and data dirs. A pod is a
network namespace wired by the installed `flannelette` executable, invoked the way a
runtime does: CNI_* env, the network config on stdin, run inside the node's namespace.
Everything created is recorded in a `Resources` and removed by `close()`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from conf.flannel import DEFAULT_PREFIX
from tests.e2e.node import Node, Pod
from tests.e2e.resources import Resources, TrackedProcess
from tests.e2e.topology import ETCD_IP, Underlay
from tests.support.etcd import EtcdServer
from tests.support.etcd_cluster import EtcdCluster
from tests.support.netns import NetNS

NETWORK = "10.244.0.0/16"


@dataclass
class ClusterSpec:
    backend: str = "vxlan"  # "vxlan" or "host-gw"
    direct_routing: bool = False
    nodes: int = 3
    routed_nodes: int = 0  # extra nodes on the second underlay subnet, behind the router
    with_router: bool = False  # build the router even with no routed node yet (to add later)
    network: str = NETWORK
    prefix: str = DEFAULT_PREFIX
    stem: str = ""  # namespace name stem, `flt-<random>` when empty
    workdir: str = ""  # where node dirs and logs go, a fresh temp dir when empty
    daemon_args: tuple[str, ...] = ()
    etcd_members: int = 1  # more: a real cluster, one member per netns on the underlay
    backend_options: dict = field(default_factory=dict)  # more Backend keys, e.g. UDPChecksum

    @property
    def label(self) -> str:
        return self.backend + ("+DirectRouting" if self.direct_routing else "")

    def net_conf(self) -> dict:
        backend: dict = {"Type": self.backend}
        if self.backend == "vxlan":
            backend.update(VNI=1, Port=8472, DirectRouting=self.direct_routing)
        backend.update(self.backend_options)
        return {"Network": self.network, "SubnetLen": 24, "Backend": backend}


def daemon_command() -> list[str]:
    """`flanneletted` as installed next to this interpreter (the venv), or $FLT_DAEMON."""
    if os.environ.get("FLT_DAEMON"):
        return os.environ["FLT_DAEMON"].split()
    return [os.path.join(os.path.dirname(sys.executable), "flanneletted")]


def plugin_bin_dir(workdir: str) -> str:
    """A CNI bin dir holding the installed `flannelette` and `flannelette-ipam`."""
    try:
        from tests.support.install import installed_bin_dir
    except ImportError:  # before the installer exists: the venv's console scripts
        bin_dir = os.path.join(workdir, "cni-bin")
        os.makedirs(bin_dir, exist_ok=True)
        for exe in ("flannelette", "flannelette-ipam"):
            os.symlink(os.path.join(os.path.dirname(sys.executable), exe),
                       os.path.join(bin_dir, exe))
        return bin_dir
    return str(installed_bin_dir(workdir))


class Cluster:
    def __init__(self, spec: ClusterSpec, bin_dir: str | None = None):
        self.spec = spec
        self.stem = spec.stem or "flt-" + secrets.token_hex(3)
        self.resources = Resources()
        self.workdir = spec.workdir or tempfile.mkdtemp(prefix=f"{self.stem}-")
        os.makedirs(self.workdir, exist_ok=True)
        self.resources.directories.append(self.workdir)
        self.bin_dir = bin_dir or plugin_bin_dir(self.workdir)
        self.nodes: list[Node] = []
        self.underlay: Underlay | None = None
        self.etcd: EtcdServer | EtcdCluster | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Cluster":
        try:
            spec = self.spec
            self.underlay = Underlay(self.stem, spec.with_router or spec.routed_nodes > 0,
                                     self.resources)
            if spec.etcd_members > 1:
                self.etcd = EtcdCluster(self.underlay, self._netns, spec.etcd_members,
                                        os.path.join(self.workdir, "etcd"))
            else:
                self.etcd = EtcdServer(self.underlay.ns, ETCD_IP)
                self.resources.directories.append(self.etcd.data_dir)
            self.etcd.start()
            self.etcd.put(f"{spec.prefix}/config", json.dumps(self.spec.net_conf()))
            for i in range(spec.nodes + spec.routed_nodes):
                self.add_node(routed=i >= spec.nodes, wait=False)
            for node in self.nodes:
                node.wait_ready()
            self.wait_converged()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> list[str]:
        """Stop everything and remove every namespace and directory; returns leftovers."""
        if self._closed:
            return []
        self._closed = True
        if isinstance(self.etcd, EtcdCluster):  # a leader stopping with its peers waits seconds
            self.etcd.stop(signal.SIGKILL)
        return self.record().teardown()  # daemons and etcd are stopped together

    def record(self) -> Resources:
        """The current resources, with the live processes (daemons, etcd) added."""
        procs = [TrackedProcess.of(n.proc.pid, f"flanneletted {n.name}")
                 for n in self.nodes if n.proc and n.proc.poll() is None]
        procs += [TrackedProcess.of(pid, "etcd") for pid in (self.etcd.pids if self.etcd else [])]
        return Resources(procs, list(self.resources.namespaces), list(self.resources.directories))

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns(self, role: str) -> NetNS:
        """A namespace `<stem>-<role>`, recorded before it exists (removed even on failure)."""
        name = f"{self.stem}-{role}"
        self.resources.namespaces.append(name)
        return NetNS(name)

    # ------------------------------------------------------------ nodes and pods

    def add_node(self, routed: bool = False, wait: bool = True) -> Node:
        assert self.underlay is not None and self.etcd is not None
        index = len(self.nodes) + 1
        name = f"node{index}"
        ns_name = f"{self.stem}-{name}"
        self.resources.namespaces.append(ns_name)
        node = Node(name, ns_name, os.path.join(self.workdir, name), self)
        self.nodes.append(node)
        node.attachment = self.underlay.attach(node.ns, name, routed=routed)
        node.start_daemon()
        if wait:
            node.wait_ready()
        return node

    def remove_node(self, node: Node) -> None:
        """A node leaves: daemon stopped, its lease deleted, its underlay port unplugged."""
        subnet = node.subnet
        node.stop_daemon()
        self.delete_lease(subnet)
        assert self.underlay is not None
        self.underlay.detach(node.attachment.port)
        self.nodes.remove(node)

    def add_pod(self, node: Node, name: str = "") -> Pod:
        name = name or f"pod{len(node.pods) + 1}"
        ns_name = f"{node.ns.name}-{name}"
        self.resources.namespaces.append(ns_name)
        return node.add_pod(name, ns_name)

    @property
    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in n.pods]

    # ------------------------------------------------------------ etcd

    def leases(self) -> dict[str, dict]:
        """`{subnet key: lease JSON}` as stored in etcd."""
        assert self.etcd is not None
        prefix = f"{self.spec.prefix}/subnets/"
        return {k[len(prefix):]: json.loads(v) for k, v in self.etcd.get_prefix(prefix).items()}

    def delete_lease(self, subnet: ipaddress.IPv4Network) -> None:
        assert self.etcd is not None
        key = f"{self.spec.prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
        self.etcd.ctl("del", key)

    # ------------------------------------------------------------ convergence

    def wait_converged(self, timeout: float = 15.0) -> float:
        """Wait until every node has a route to every other node's subnet; returns seconds."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            missing = self.missing_routes()
            if not missing:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.spec.label}: routes still missing after {timeout}s: "
                                     f"{missing}\n{self.diagnostics()}")
            time.sleep(0.05)

    def missing_routes(self) -> list[str]:
        subnets = {n.name: n.subnet for n in self.nodes}
        return [f"{n.name} -> {other}" for n in self.nodes
                for other, subnet in subnets.items()
                if other != n.name and not n.route_to(subnet)]

    def diagnostics(self) -> str:
        """Leases, and per node the routes, neighbours, FDB and daemon log tail: for failures."""
        try:
            parts = [f"leases: {json.dumps(self.leases(), indent=1)}"]
        except Exception as e:  # etcd itself may be what failed
            parts = [f"leases: cannot list them: {str(e)[-300:]}"]
        for node in self.nodes:
            parts.append(node.describe())
            parts.append(f"--- {node.name} daemon log (tail)\n{node.log_tail()}")
        return "\n".join(parts)



__all__ = ["Cluster", "ClusterSpec", "Node", "Pod", "daemon_command", "plugin_bin_dir"]
