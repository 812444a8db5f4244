"""SIGKILL at random moments of a CNI call, and the audit of what the kill left behind.

Kill moments are drawn from a seeded generator (FLT_CRASH_SEED, else the clock; the
seed is printed so a failing run can be replayed). Trial counts are small by default
for CI and large with FLT_SOAK=1.

The audit reads the stores as another process would right after the kill: every
file of the IPAM store and of the plugin's state dir must parse, whatever moment
the writer died at. Temporary files of a killed writer are allowed then, and must
be gone once the attachment was deleted (DEL or GC).
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from cni_plugin.state import AttachmentState
from ipam.shared_store import OWNERS_DIR
from tests.support.cni import cni_env

SOAK = bool(os.environ.get("FLT_SOAK"))
IPAM_FILES = ("lock", "boot_id")  # besides reservations and hints
STATE_FILES = ("lock", "attachments.boot_id")  # besides state files
RESERVATION_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)\r\n([^\r\n/]+)$")


def trial_count(default: int, soak: int) -> int:
    return soak if SOAK else default


def crash_rng(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get("FLT_CRASH_SEED") or time.time_ns() % (1 << 32))
    print(f"{name}: FLT_CRASH_SEED={seed}")
    return random.Random(seed), seed


def start_plugin(exe: str, command: str, config: dict, *, node_ns: str, cid: str, netns: str,
                 cni_path: str, ifname: str = "eth0") -> subprocess.Popen:
    """The plugin as a runtime starts it, in its own session so a kill can be checked to
    have left no child behind (`ip netns exec` execs the plugin: same pid)."""
    env = cni_env(command, container_id=cid, netns=netns, ifname=ifname, cni_path=cni_path)
    proc = subprocess.Popen(["ip", "netns", "exec", node_ns, exe], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    proc.stdin = None  # so communicate() does not flush it
    return proc


def kill_after(proc: subprocess.Popen, delay: float, begun: Optional[Callable[[], bool]] = None) -> Optional[float]:
    """SIGKILL `proc` `delay` s after `begun()` first holds (polled; None: at once); None when
    it was still running (killed), else how long it ran after that moment. Either way
    nothing of its session may survive it."""
    while begun is not None and proc.poll() is None and not begun():
        time.sleep(0.0005)
    started = time.monotonic()
    deadline = started + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(min(0.001, max(0.0, deadline - time.monotonic())))
    ran = None if proc.poll() is None else time.monotonic() - started
    if ran is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not _group_alive(proc.pid), f"a child of the killed plugin {proc.pid} outlived it"
    return ran


def links_seen_by(pid: int) -> str:
    """The interface list of `pid`'s netns (empty once it exited): cheap enough to poll."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            return f.read()
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    for _ in range(200):  # an exiting child may take a moment to be reaped
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.005)
    return True


def timed(fn, *args, **kw) -> tuple[float, object]:
    started = time.monotonic()
    out = fn(*args, **kw)
    return time.monotonic() - started, out


# ---------------------------------------------------------------- the stores


@dataclass
class StoreView:
    reservations: dict[str, tuple[str, str]] = field(default_factory=dict)  # ip -> (cid, ifname)
    ipam_temp: list[str] = field(default_factory=list)
    states: dict[tuple[str, str], AttachmentState] = field(default_factory=dict)
    staging: list[str] = field(default_factory=list)
    owner_markers: list[str] = field(default_factory=list)  # "<network>/<ip>" (ipam.shared_store)

    def held_by(self, cid: str, ifname: str = "eth0") -> list[str]:
        return sorted(ip for ip, owner in self.reservations.items() if owner == (cid, ifname))

    @property
    def empty(self) -> bool:
        return not (self.reservations or self.ipam_temp or self.states or self.staging
                    or self.owner_markers)


def audit_stores(ipam_net_dir: str, state_net_dir: str, subnet: str) -> StoreView:
    """Parse every file of both stores; AssertionError names the first corrupt one."""
    view = StoreView()
    net = ipaddress.ip_network(subnet, strict=False)
    for name in _listing(ipam_net_dir):
        path = os.path.join(ipam_net_dir, name)
        if name.startswith("."):
            view.ipam_temp.append(name)
            continue
        if name == OWNERS_DIR:
            view.owner_markers += _audit_owner_markers(path, net)
            continue
        data = _read(path)
        if name in IPAM_FILES or data is None:
            continue
        if name.startswith("last_reserved_ip."):
            text = data.decode("ascii", "replace")
            try:
                hint = ipaddress.ip_address(text.strip())
            except ValueError:
                raise AssertionError(f"torn round-robin hint {path}: {text!r}") from None
            assert hint in net, f"hint {path} holds {hint}, outside {net}"
            continue
        ip = ipaddress.ip_address(name)  # ValueError: a file that should not be there
        assert ip in net, f"reservation {path} outside {net}"
        match = RESERVATION_RE.match(data.decode("utf-8", "replace"))
        assert match, f"half-written reservation {path}: {data!r}"
        view.reservations[name] = (match.group(1), match.group(2))
    for name in _listing(state_net_dir):
        path = os.path.join(state_net_dir, name)
        if name.startswith(".") and name.endswith(".json.tmp"):
            view.staging.append(name)
            continue
        if name in STATE_FILES:
            continue
        assert name.endswith(".json"), f"unexpected file in the plugin state dir: {path}"
        data = _read(path)
        if data is None:
            continue
        try:
            state = AttachmentState.model_validate_json(data)
        except ValueError as e:
            raise AssertionError(f"corrupt plugin state {path}: {e}") from None
        assert name == f"{state.container_id}:{state.ifname}.json", f"{path} holds {state.container_id}"
        view.states[(state.container_id, state.ifname)] = state
    return view


def _audit_owner_markers(owners_dir: str, net) -> list[str]:
    """The shared store's `owners/<network>/<ip>` markers: empty files named by an address."""
    found = []
    for network in _listing(owners_dir):
        for name in _listing(os.path.join(owners_dir, network)):
            ip = ipaddress.ip_address(name)  # ValueError: a file that should not be there
            assert ip in net, f"owner marker {network}/{name} outside {net}"
            assert _read(os.path.join(owners_dir, network, name)) in (b"", None), \
                f"owner marker {network}/{name} is not empty"
            found.append(f"{network}/{name}")
    return found


def _listing(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _read(path: str) -> Optional[bytes]:
    """None when the file went between the listing and the read (a fast-path server may
    still be running the request whose client was killed)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- what a kill left


def aftermath(view: StoreView, veths: set[str], host_veth: str, cid: str, finished: bool) -> str:
    """Which stage the kill interrupted, read off what exists: for the printed histogram
    ("intent": the state ADD writes before its first change, without a result yet)."""
    if finished:
        return "completed before the kill"
    state = view.states.get((cid, "eth0"))
    parts = [name for name, present in (("intent", state is not None and not state.result),
                                         ("veth", host_veth in veths), ("address", bool(view.held_by(cid))),
                                         ("state", state is not None and bool(state.result)),
                                         ("temp files", bool(view.ipam_temp or view.staging))) if present]
    return "+".join(parts) or "nothing"


def summary(name: str, seed: int, trials: int, stages: Counter, extra: Optional[str] = None) -> str:
    stages_text = ", ".join(f"{k}: {v}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
    line = f"{name}: {trials} trials, seed {seed}; left after the kill: {stages_text}"
    if extra:
        line += f"; {extra}"
    print(line)
    return line
