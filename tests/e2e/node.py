"""One node of a test cluster (a netns running `flanneletted`) and its pods (netns each).

Pods are wired exactly as a runtime wires them: the installed `flannelette` is executed
inside the node's namespace with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/CNI_IFNAME/CNI_PATH
in its environment and the network config on stdin; its stdout is the CNI result.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from conf.flannel import load_subnet_env
from tests.e2e.topology import Attachment
from tests.support.netns import NetNS
from tests.support.procs import stop_group

if TYPE_CHECKING:
    from tests.e2e.cluster import Cluster

HEALTHZ_PORT = 8471
# A pod's TCP service: answers every connection with who it is and who called.
_TCP_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[2]} greets {peer[0]}".encode())
    c.close()
"""
_TCP_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:
    print(c.recv(200).decode())
"""
_PING_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


class CniCallError(RuntimeError):
    pass


class Node:
    def __init__(self, name: str, ns_name: str, directory: str, cluster: "Cluster"):
        self.name, self.cluster, self.dir = name, cluster, directory
        self.ns = NetNS(ns_name)
        self.attachment: Attachment | None = None
        self.pods: list[Pod] = []
        self.proc: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)
        self.subnet_file = os.path.join(directory, "run/flannel/subnet.env")
        self.cni_socket = os.path.join(directory, "run/flannelette/cni.sock")
        self.state_dir = os.path.join(directory, "var/lib/flannelette")
        self.plugin_data = os.path.join(directory, "var/lib/cni/flannelette")
        self.ipam_data = os.path.join(directory, "var/lib/cni/networks")
        self.log_path = os.path.join(directory, "flanneletted.log")
        self.conflist_path = os.path.join(directory, "10-flannelette.conf")  # for `flannelette doctor`
        if len(self.cni_socket.encode()) > 107:  # sun_path holds 108 bytes with the NUL
            raise ValueError(f"{self.cni_socket} is too long for a unix socket: "
                             "use a shorter cluster workdir")
        # A node forwards between cni0 and the underlay, as kubelet/kube-proxy hosts do.
        self.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        with open(self.conflist_path, "w") as f:
            json.dump(self.network_config(), f)

    @property
    def ip(self) -> str:
        assert self.attachment is not None
        return self.attachment.ip

    # ------------------------------------------------------------ the daemon

    def daemon_argv(self) -> list[str]:
        from tests.e2e.cluster import daemon_command
        c = self.cluster
        assert c.etcd is not None
        return [*daemon_command(),
                "--etcd-endpoints", c.etcd.endpoint, "--etcd-prefix", c.spec.prefix,
                "--iface", "eth0", "--public-ip", self.ip,
                "--subnet-file", self.subnet_file, "--cni-socket", self.cni_socket,
                "--state-dir", self.state_dir,
                "--healthz-ip", "127.0.0.1", "--healthz-port", str(HEALTHZ_PORT),
                *c.spec.daemon_args]

    def start_daemon(self) -> None:
        log = open(self.log_path, "ab")
        with log:
            self.proc = self.ns.popen(*self.daemon_argv(), stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0, since: float = 0.0) -> None:
        """Until the daemon has written subnet.env (newer than `since`, a time.time())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"flanneletted on {self.name} exited "
                                   f"({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            try:
                if os.stat(self.subnet_file).st_mtime >= since:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"flanneletted on {self.name} wrote no {self.subnet_file} "
                           f"in {timeout}s:\n{self.log_tail()}")

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        code, self.proc = stop_group(self.proc, sig, timeout), None
        return code

    def restart_daemon(self) -> None:
        self.stop_daemon()
        since = time.time()
        self.start_daemon()
        self.wait_ready(since=since)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------ what the node knows

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        env = load_subnet_env(self.subnet_file)
        assert env.subnet is not None
        return env.subnet.network

    def route_to(self, subnet: ipaddress.IPv4Network) -> list[dict]:
        out = self.ns.run("ip", "-j", "route", "show", "exact", str(subnet)).stdout
        return json.loads(out or b"[]")

    def data_plane(self) -> dict[str, str]:
        """The kernel state the daemon programs, as text (for before/after comparisons)."""
        def sh(*cmd: str) -> str:
            return self.ns.run(*cmd, check=False).stdout.decode()
        return {"routes": sh("ip", "route", "show"),
                "neigh": sh("ip", "neigh", "show", "nud", "permanent"),
                "fdb": sh("bridge", "fdb", "show", "dev", "flannel.1"),
                "vtep": sh("ip", "-o", "link", "show", "dev", "flannel.1")}  # ifindex: recreated?

    def describe(self) -> str:
        plane = self.data_plane()
        return (f"=== {self.name} ({self.ns.name}, public IP {self.ip})\n"
                f"--- routes\n{plane['routes']}--- neighbours (permanent)\n{plane['neigh']}"
                f"--- FDB flannel.1\n{plane['fdb']}")

    def doctor_argv(self, *args: str) -> list[str]:
        """`flannelette doctor ARGS` as an operator runs it on this node, with the flags that
        point it at this node's config, etcd and socket."""
        c = self.cluster
        assert c.etcd is not None
        return ["ip", "netns", "exec", self.ns.name, os.path.join(c.bin_dir, "flannelette"), "doctor", *args,
                "--conflist", self.conflist_path, "--etcd-endpoints", c.etcd.endpoint,
                "--etcd-prefix", c.spec.prefix, "--cni-socket", self.cni_socket]

    # ------------------------------------------------------------ pods

    def network_config(self) -> dict:
        """What a runtime would pass on stdin for a single-plugin conflist on this node."""
        return {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannelette",
                "subnetFile": self.subnet_file, "dataDir": self.plugin_data,
                "daemonSocket": self.cni_socket,
                "ipam": {"type": "flannelette-ipam", "subnetFile": self.subnet_file,
                         "dataDir": self.ipam_data}}

    def cni(self, command: str, container_id: str, netns_path: str,
            ifname: str = "eth0") -> dict:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns_path, "CNI_IFNAME": ifname,
               "CNI_PATH": self.cluster.bin_dir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        exe = os.path.join(self.cluster.bin_dir, "flannelette")
        proc = subprocess.run(["ip", "netns", "exec", self.ns.name, exe], env=env,
                              input=json.dumps(self.network_config()).encode(),
                              capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise CniCallError(f"{command} on {self.name} exited {proc.returncode}: "
                               f"{proc.stdout.decode()} {proc.stderr.decode()[-2000:]}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def add_pod(self, name: str, ns_name: str) -> "Pod":
        pod = Pod(name, NetNS(ns_name), self)
        pod.result = self.cni("ADD", pod.container_id, pod.ns.path)
        pod.ip = pod.result["ips"][0]["address"].split("/")[0]
        self.pods.append(pod)
        return pod

    def remove_pod(self, pod: "Pod") -> None:
        """CNI DEL, as the runtime does when a pod goes (its netns stays for teardown)."""
        self.cni("DEL", pod.container_id, pod.ns.path)
        self.pods.remove(pod)


class Pod:
    def __init__(self, name: str, ns: NetNS, node: Node):
        self.name, self.ns, self.node = name, ns, node
        self.container_id = f"{node.ns.name}-{name}"
        self.ip = ""
        self.result: dict = {}

    @property
    def label(self) -> str:
        return f"{self.node.name}/{self.name}"

    def ping(self, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        return self.ns.run("ping", "-n", "-q", "-c", str(count), "-W", str(wait), ip,
                           check=False).returncode == 0

    def ping_until(self, ip: str, timeout: float) -> float | None:
        """Ping every 20 ms until a reply; seconds until the first reply, None on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ping(ip, wait=0.2):
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def ping_stream(self, ip: str, count: int, interval: float = 0.05) -> subprocess.Popen:
        """A continuous ping in the background; read its counts with `ping_counts`."""
        return self.ns.popen("ping", "-n", "-q", "-i", str(interval), "-W", "1",
                             "-c", str(count), ip, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)


    def serve_tcp(self, port: int) -> subprocess.Popen:
        """A TCP listener inside the pod (no nc needed); returns once it listens."""
        proc = self.ns.popen(sys.executable, "-c", _TCP_SERVER, str(port), self.ip,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"listening" not in line:
            proc.kill()
            raise RuntimeError(f"TCP listener in {self.label} failed: {line!r}")
        return proc

    def tcp_request(self, ip: str, port: int) -> str:
        """Connect from this pod to ip:port and return what the server said."""
        return self.ns.run(sys.executable, "-c", _TCP_CLIENT, ip, str(port),
                           timeout=10).stdout.decode().strip()


def ping_counts(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, int]:
    """(transmitted, received) of a finished `ping_stream`."""
    out, _ = proc.communicate(timeout=timeout)
    m = _PING_STATS.search(out.decode())
    if not m:
        raise AssertionError(f"no ping statistics in: {out.decode()}")
    return int(m.group(1)), int(m.group(2))
