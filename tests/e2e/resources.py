"""A record of everything a test cluster (or the demo) created, and its removal.

The record is plain JSON so `demo.py down` can remove a cluster that a previous
process left running. Processes are identified by pid *and* kernel start time,
so a pid reused by an unrelated process after a reboot is never signalled.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces or ')': split after the last ')'.
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":  # exited; its parent (maybe not us, maybe a lazy init) reaps it
        return None
    return int(fields[19])


@dataclass
class TrackedProcess:
    pid: int
    start_time: int
    what: str

    @classmethod
    def of(cls, pid: int, what: str) -> "TrackedProcess":
        return cls(pid, process_start_time(pid) or 0, what)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def signal(self, sig: int) -> None:
        """Signal the process group (daemons run in their own session), else the process."""
        if not self.alive():
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout: float = 5.0) -> None:
        stop_all([self], timeout)


def stop_all(processes: list[TrackedProcess], timeout: float = 5.0) -> None:
    """SIGTERM all at once, wait, then SIGKILL whatever is left (in parallel: fast teardown)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in processes if p.alive()]
        for proc in live:
            proc.signal(sig)
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            for proc in live:
                _reap(proc.pid)
            live = [p for p in live if p.alive()]
            time.sleep(0.02)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (the demo's `down` runs in another process)


@dataclass
class Resources:
    """What to remove, in order: processes, then namespaces, then directories."""

    processes: list[TrackedProcess] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Resources":
        raw = json.loads(text)
        return cls([TrackedProcess(**p) for p in raw.get("processes", [])],
                   list(raw.get("namespaces", [])), list(raw.get("directories", [])))

    def teardown(self) -> list[str]:
        """Remove everything; returns what could not be removed (empty when clean)."""
        stop_all(self.processes)
        for name in self.namespaces:
            if not name.startswith("flt-"):
                raise ValueError(f"refusing to delete namespace {name!r}: not ours")
            if os.path.exists(f"/run/netns/{name}"):
                _kill_namespace_processes(name)
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        for path in self.directories:
            shutil.rmtree(path, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        left = [f"process {p.what} ({p.pid})" for p in self.processes if p.alive()]
        left += [f"netns {n}" for n in self.namespaces if os.path.exists(f"/run/netns/{n}")]
        left += [f"dir {d}" for d in self.directories if os.path.exists(d)]
        return left


def _kill_namespace_processes(name: str) -> None:
    """Anything still running inside a namespace we made (a pod's listener, a stray ping)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    stop_all([TrackedProcess.of(int(pid), f"in {name}") for pid in out.split()], timeout=2.0)
