"""A real etcd (Debian's etcd-server) for tests, listening inside a network namespace.

`EtcdServer(ns, ip)` starts etcd in `ns` on ip:port with a throwaway data dir; the
test's own process reaches it only from inside a namespace (`ns.run("etcdctl", ...)`
or a daemon started with `ip netns exec`), never through the root namespace.
TLS and auth can be layered on by passing extra etcd flags and a scheme, or with
`EtcdServer.with_tls(ns, ip, pki)` (client certificates required) and
`enable_auth(user, password, prefix)` (a user whose role may read/write the prefix only).
`EtcdCluster` runs several members, each an `EtcdServer` in its own namespace, joined by a
static --initial-cluster (tests/support/etcd_cluster.py).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from tests.support.certs import Pki
from tests.support.netns import NetNS
from tests.support.procs import stop_group

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class EtcdServer:
    def __init__(self, ns: NetNS, ip: str = "127.0.0.1", port: int = 2379,
                 scheme: str = "http", extra_args: tuple[str, ...] = (),
                 ctl_args: tuple[str, ...] = (), name: str = "flt",
                 initial_cluster: str = "", data_dir: str = ""):
        self.ns, self.ip, self.port, self.scheme = ns, ip, port, scheme
        self.extra_args = extra_args
        self.ctl_args = ctl_args  # e.g. --cacert/--cert/--key/--user for etcdctl
        self.name = name
        # name=peer URL of every member; a lone member is a cluster of itself
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="flt-etcd-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @classmethod
    def with_tls(cls, ns: NetNS, ip: str, pki: Pki, port: int = 2379) -> "EtcdServer":
        """etcd that only accepts clients presenting a certificate signed by pki.ca."""
        return cls(ns, ip, port, scheme="https",
                   extra_args=("--cert-file", pki.server_cert, "--key-file", pki.server_key,
                               "--trusted-ca-file", pki.ca, "--client-cert-auth"),
                   ctl_args=("--cacert", pki.ca, "--cert", pki.client_cert,
                             "--key", pki.client_key))

    def enable_auth(self, user: str, password: str, prefix: str,
                    root_password: str = "flt-root-pw") -> None:
        """Turn on auth: `root` for the tests' etcdctl, `user` with read/write on prefix only.

        These are the etcdctl commands the README documents for operators.
        """
        role = f"{user}-role"
        self.ctl("user", "add", f"root:{root_password}")
        self.ctl("role", "add", role)
        self.ctl("role", "grant-permission", role, "--prefix=true", "readwrite", prefix + "/")
        self.ctl("user", "add", f"{user}:{password}")
        self.ctl("user", "grant-role", user, role)
        self.ctl("auth", "enable")
        self.ctl_args = (*self.ctl_args, "--user", f"root:{root_password}")

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.ip}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.port + 1}"

    def launch(self) -> None:
        """Start the process (its own session) without waiting for it to serve."""
        with open(os.path.join(self.data_dir, "etcd.log"), "ab") as log:
            self.proc = self.ns.popen(
                ETCD, "--name", self.name, "--data-dir", os.path.join(self.data_dir, "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster,
                "--logger", "zap", "--log-outputs", "stderr",
                *self.extra_args, stdout=log, stderr=log, start_new_session=True)

    def start(self, timeout: float = 20) -> "EtcdServer":
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: see {self.data_dir}/etcd.log")
            if self.ctl("endpoint", "health", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy in {timeout}s; see {self.data_dir}/etcd.log")

    def ctl(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        return self.ns.run(ETCDCTL, "--endpoints", self.endpoint, "--dial-timeout", "2s",
                           *self.ctl_args, *args, check=check, input=input, env=env)

    def put(self, key: str, value: str) -> None:
        self.ctl("put", key, value)

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self.ctl("get", "--prefix", prefix).stdout.decode().splitlines()
        return dict(zip(out[::2], out[1::2]))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd, keeping its data (start() again resumes the same store)."""
        if self.proc:
            stop_group(self.proc, sig)
        self.proc = None

    @property
    def pids(self) -> list[int]:
        """The live etcd process (for a cluster's record of what to kill)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
