"""A real multi-member etcd for tests: one `EtcdServer` per member, each in its own netns.

    underlay br0:  etcd1 .11   etcd2 .12   etcd3 .13   node ...   (peer port 2380, client 2379)

Members are plugged into the underlay like nodes (`Underlay.attach`), know each other
from a static --initial-cluster and keep their data dirs under one work dir, so a
member (or all of them) can be killed and started again on the same store.
etcdctl runs inside a live member's namespace. `.endpoint` is the comma list that
`--etcd-endpoints` takes, so a cluster stands in wherever one `EtcdServer` does.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable, Optional

from tests.support.etcd import ETCDCTL, EtcdServer
from tests.support.netns import NetNS
from tests.support.underlay import Underlay


class EtcdCluster:
    def __init__(self, underlay: Underlay, new_netns: Callable[[str], NetNS], size: int = 3,
                 workdir: str = ""):
        self.workdir = workdir or tempfile.mkdtemp(prefix="flt-etcd-")
        names = [f"etcd{i}" for i in range(1, size + 1)]
        spots = []
        for name in names:  # namespaces first: the caller records them before any can fail
            ns = new_netns(name)
            spots.append((ns, underlay.attach(ns, port=name).ip))
        initial = ",".join(f"{name}=http://{ip}:2380" for name, (_, ip) in zip(names, spots))
        self.members = [EtcdServer(ns, ip, name=name, initial_cluster=initial,
                                   data_dir=os.path.join(self.workdir, name))
                        for name, (ns, ip) in zip(names, spots)]

    # ------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """Every member's client URL, comma-separated (for --etcd-endpoints)."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def pids(self) -> list[int]:
        return [pid for m in self.members for pid in m.pids]

    def start(self, timeout: float = 30) -> "EtcdCluster":
        """Start every member that is not running and wait until all are healthy."""
        try:
            for m in self.members:
                if not m.pids:
                    m.launch()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        return self

    def wait_healthy(self, timeout: float = 30) -> float:
        """Until every member answers `endpoint health` (which needs a quorum); seconds waited."""
        start = time.monotonic()
        while True:
            exited = [m.name for m in self.members
                      if m.proc is not None and m.proc.poll() is not None]
            if exited:
                raise RuntimeError(f"etcd member(s) {exited} exited: see {self.workdir}/*/etcd.log")
            if self.ctl("endpoint", "health", check=False).returncode == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"etcd cluster not healthy in {timeout}s; see {self.workdir}")
            time.sleep(0.05)

    def kill(self, member: EtcdServer, sig: int = signal.SIGKILL) -> None:
        member.stop(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop every member, keeping the data (start() brings the same cluster back)."""
        for m in self.members:
            m.stop(sig)

    def isolate(self, member: EtcdServer, cut: bool = True) -> None:
        """Cut the member off from its peers (raft port dropped in its own netns) while
        clients still reach it; cut=False heals the partition."""
        action = "-A" if cut else "-D"
        for chain, way in (("INPUT", "--dport"), ("INPUT", "--sport"), ("OUTPUT", "--dport")):
            member.ns.run("iptables", "-w", action, chain, "-p", "tcp", way, str(member.port + 1),
                          "-j", "DROP")

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ etcdctl

    def ctl(self, *args: str, check: bool = True, input: bytes | None = None,
            endpoints: Optional[str] = None, timeout: str = "2s") -> subprocess.CompletedProcess:
        """etcdctl against every member (or `endpoints`), from inside a live member's netns."""
        inside = next((m for m in self.members if m.pids), self.members[0])
        env = dict(os.environ, ETCDCTL_API="3")
        return inside.ns.run(ETCDCTL, "--endpoints", endpoints or self.endpoint,
                             "--dial-timeout", "1s", "--command-timeout", timeout,
                             *args, check=check, input=input, env=env)

    put = EtcdServer.put
    get_prefix = EtcdServer.get_prefix

    def statuses(self) -> list[dict]:
        """`endpoint status -w json` of the members that answer (id, leader, raft term)."""
        live = ",".join(m.endpoint for m in self.members if m.pids)
        if not live:
            return []
        out = self.ctl("endpoint", "status", "-w", "json", endpoints=live, check=False).stdout
        return json.loads(out or b"[]")

    def leader(self, timeout: float = 10) -> EtcdServer:
        """The member that is raft leader now (waits through an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for st in self.statuses():
                status = st["Status"]  # etcdctl leaves out a zero leader (mid-election)
                if status.get("leader") and status["header"]["member_id"] == status["leader"]:
                    return next(m for m in self.members if m.endpoint == st["Endpoint"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader in {timeout}s: {self.statuses()}")
            time.sleep(0.1)

    def member_id(self, member: EtcdServer) -> int:
        for st in self.statuses():
            if st["Endpoint"] == member.endpoint:
                return st["Status"]["header"]["member_id"]
        raise RuntimeError(f"{member.name} does not answer")

    def move_leader(self, to: EtcdServer) -> None:
        """Make `to` the leader (etcdctl move-leader, sent to the current leader)."""
        current = self.leader()
        if current is not to:
            self.ctl("move-leader", format(self.member_id(to), "x"), endpoints=current.endpoint)
        deadline = time.monotonic() + 10
        while self.leader() is not to:
            if time.monotonic() > deadline:
                raise RuntimeError(f"leadership did not move to {to.name}")
            time.sleep(0.1)

