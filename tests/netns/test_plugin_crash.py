"""Crash safety of the plugin: SIGKILL at random moments of ADD and DEL.

Three ways a node loses a CNI call half-way, each through the installed executable:
- the in-process stack (fast path off) killed;
- the fast path's shim killed while the server goes on with its request;
- the fast-path server itself killed mid-request and restarted.
After every kill: the stores parse; a retried ADD succeeds with the address the killed
one had reserved and the pod holds exactly that one; DEL or GC afterwards leaves no
veth, reservation, state or temporary file. Each test prints its seed, its trial count
and a histogram of the stage each kill interrupted (read off what it left).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import statistics
import time
from collections import Counter, deque
from typing import Optional

import pytest

from cni_plugin.attachment import host_veth_name
from tests.support.crash import (aftermath, audit_stores, crash_rng, kill_after, links_seen_by, start_plugin,
                                 summary, timed, trial_count)

pytestmark = pytest.mark.timeout(900)
SUBNET = "10.244.1.0/24"
# How a trial ends, in turn: ADD retried then DEL; ADD retried then GC; GC straight after the
# kill, as when the runtime gives the pod up (not after a shim kill: the server may still be
# running that ADD, and GC never races an ADD of an attachment the runtime still lists).
ENDINGS = ("retry+DEL", "retry+GC", "GC")


def _audit(cni):
    return audit_stores(f"{cni.ipam_dir}/flt-net", f"{cni.data_dir}/flt-net", SUBNET)


def _start(cni, command, cid, pod, config=None):
    return start_plugin(cni.exe(), command, config or cni.conf(), node_ns=cni.node.name, cid=cid,
                        netns=pod.path, cni_path=cni.bin_dir)


def _retried_add(cni, pod, cid, held):
    """kubelet's retry: it succeeds, with the killed ADD's address if that one got one."""
    result = cni.add(pod, cid)
    addresses = [ip["address"] for ip in result["ips"]]
    assert len(addresses) == 1, result
    if held:
        assert [addresses[0].split("/")[0]] == held, f"{cid}: retry got {addresses}, the killed ADD held {held}"
    assert cni.pod_addresses(pod) == {ipaddress.ip_interface(addresses[0])}
    view = _audit(cni)
    assert view.held_by(cid) == [addresses[0].split("/")[0]] and (cid, "eth0") in view.states
    return addresses[0]


def _clean_up(cni, pods, cids, use_gc):
    if use_gc:
        out = cni.run("GC", cni.conf("1.1.0", **{"cni.dev/valid-attachments": []}))
        assert (out.status, out.result) == (0, None), out
    else:
        for pod, cid in zip(pods, cids):
            out = cni.delete(pod, cid)
            assert (out.status, out.result) == (0, None), out
    view = _audit(cni)
    assert view.empty, f"left after {'GC' if use_gc else 'DEL'}: {view}"
    assert cni.node_veths() == set()
    for pod in pods:
        assert [line.split()[0] for line in pod.out("ip", "-br", "link").splitlines()] == ["lo"]


class Durations:
    """The running median of the last few uninterrupted calls, started the way the killed ones
    are: the scale of the kill delays, kept current while the machine's load changes under
    the test. A cold in-process call spends most of its time starting up; a kill `in_phase`
    waits for the call's first change (ADD: its state file appears; DEL: the host veth goes)
    and is scaled by the length of that phase."""

    def __init__(self, cni, pod, in_phase: bool):
        self.in_phase = in_phase
        self.seen: dict[str, deque] = {"ADD": deque(maxlen=5), "DEL": deque(maxlen=5)}
        for i in range(4):  # the first call also creates cni0 and warms the caches
            for verb in ("ADD", "DEL"):
                ran = self.kill(cni, verb, f"measure-{i}", pod, 3600)
                assert ran is not None
                if i:
                    self.seen[verb].append(ran)

    def kill(self, cni, verb, cid, pod, delay) -> Optional[float]:
        proc = _start(cni, verb, cid, pod)
        begun = None
        if self.in_phase and verb == "ADD":
            path = f"{cni.data_dir}/flt-net/{cid}:eth0.json"
            begun = lambda: os.path.exists(path)  # noqa: E731
        elif self.in_phase:
            host = host_veth_name(cid, "eth0") + ":"

            def begun() -> bool:  # in the node netns (cni0 is there), and the veth has gone
                seen = links_seen_by(proc.pid)
                return "cni0:" in seen and host not in seen
        return kill_after(proc, delay, begun)

    def add(self, verb: str, ran: Optional[float]) -> None:
        if ran is not None:
            self.seen[verb].append(ran)

    def __getitem__(self, verb: str) -> float:
        return statistics.median(self.seen[verb])


def _ending(verb: str, i: int, endings=ENDINGS) -> tuple[bool, bool]:
    """(retry the ADD, clean up with GC) for trial `i`; a killed DEL is retried or GC'd."""
    if verb == "DEL":
        return False, i % 2 == 1
    ending = endings[i % len(endings)]
    return ending.startswith("retry"), ending.endswith("GC")


def _kill_trials(cni, name, verb, trials, low, high, in_phase=False, endings=ENDINGS):
    """One pod, `trials` kills of the executable running `verb` after a delay drawn uniformly
    from [low, high] x the measured duration (of the phase that changes things: `in_phase`)."""
    rng, seed = crash_rng(name)
    pod = cni.pod()
    durations = Durations(cni, pod, in_phase)
    stages: Counter = Counter()
    for i in range(trials):
        cid = f"crash-{verb.lower()}-{i}"
        if verb == "DEL":
            cni.add(pod, cid)
        ran = durations.kill(cni, verb, cid, pod, rng.uniform(low, high) * durations[verb])
        durations.add(verb, ran)
        view = _audit(cni)
        stages[aftermath(view, cni.node_veths(), host_veth_name(cid, "eth0"), cid, ran is not None)] += 1
        retry, use_gc = _ending(verb, i, endings)
        if retry:
            _retried_add(cni, pod, cid, view.held_by(cid))
        _clean_up(cni, [pod], [cid], use_gc)
    phase = " from its first change" if in_phase else ""
    summary(name, seed, trials, stages, f"endings in turn: {', '.join(endings) if verb == 'ADD' else 'DEL, GC'}; "
            f"{verb} takes {durations[verb] * 1000:.0f} ms{phase} here (median of the last 5)")


IN_PROCESS = {"ADD": trial_count(16, 300), "DEL": trial_count(8, 150)}
SHIM = {"ADD": trial_count(120, 1000), "DEL": trial_count(60, 500)}
SERVER = {"ADD": trial_count(9, 120), "DEL": trial_count(6, 60)}


@pytest.mark.parametrize("cni", ["inproc"], indirect=True)
@pytest.mark.parametrize("verb", ["ADD", "DEL"], ids=lambda v: f"{v}-{IN_PROCESS[v]}trials")
def test_in_process_plugin_killed_at_random(cni, verb):
    # A cold in-process call spends most of its time starting the interpreter and importing,
    # and its last part exiting: the kills are drawn from its first change on, early in what
    # follows.
    _kill_trials(cni, f"in-process {verb} killed", verb, IN_PROCESS[verb], low=0.0, high=0.3, in_phase=True)


@pytest.mark.parametrize("cni", ["fastpath"], indirect=True)
@pytest.mark.parametrize("verb", ["ADD", "DEL"], ids=lambda v: f"{v}-{SHIM[v]}trials")
def test_fast_path_shim_killed_at_random(cni, verb):
    _kill_trials(cni, f"fast-path shim {verb} killed", verb, SHIM[verb], low=0.0, high=1.0,
                 endings=ENDINGS[:2])


CONCURRENT = 3  # requests in flight when the server dies


@pytest.mark.parametrize("cni", ["fastpath"], indirect=True)
@pytest.mark.parametrize("verb", ["ADD", "DEL"], ids=lambda v: f"{v}-{SERVER[v]}trials-x{CONCURRENT}")
def test_fast_path_server_killed_mid_request_and_restarted(cni, verb):
    name = f"fast-path server killed during {CONCURRENT} {verb}s"
    rng, seed = crash_rng(name)
    pods = [cni.pod() for _ in range(CONCURRENT)]
    durations = []
    for i in range(3):  # the duration of CONCURRENT requests at once
        cids = [f"measure-{i}-{k}" for k in range(CONCURRENT)]
        for command in ("ADD", "DEL"):
            d, _ = timed(_run_all, cni, command, cids, pods)
            durations += [d] if command == verb else []
    duration = min(durations)
    stages: Counter = Counter()
    replies: Counter = Counter()
    for i in range(SERVER[verb]):
        cids = [f"dkill-{verb.lower()}-{i}-{k}" for k in range(CONCURRENT)]
        if verb == "DEL":
            _run_all(cni, "ADD", cids, pods)
        procs = [_start(cni, verb, cid, pod) for cid, pod in zip(cids, pods)]
        time.sleep(rng.uniform(0.0, 1.1) * duration)
        cni.server.kill()
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            replies[_reply_kind(proc.returncode, out)] += 1
        view = _audit(cni)
        veths = cni.node_veths()
        for cid in cids:
            stages[aftermath(view, veths, host_veth_name(cid, "eth0"), cid, False)] += 1
        cni.server.restart()
        retry, use_gc = _ending(verb, i)
        if retry:
            for cid, pod in zip(cids, pods):
                _retried_add(cni, pod, cid, view.held_by(cid))
        _clean_up(cni, pods, cids, use_gc)
    replies_text = ", ".join(f"{k}: {v}" for k, v in sorted(replies.items()))
    summary(name, seed, SERVER[verb], stages, f"{SERVER[verb] * CONCURRENT} requests in flight; "
            f"replies {replies_text}; {CONCURRENT} {verb}s take {duration * 1000:.0f} ms here")


def _run_all(cni, command, cids, pods):
    procs = [_start(cni, command, cid, pod) for cid, pod in zip(cids, pods)]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out


def _reply_kind(status: int, out: bytes) -> str:
    """What a runtime saw when the server died under its request."""
    if status == 0:
        return "success"
    err = json.loads(out)
    assert err["code"] == 11 and "retry" in err["msg"], err  # the only failure a dying server may cause
    return "error 11 (retry)"


SLOW_IPAM = """#!/bin/sh
# flannelette-ipam, announced in a marker file and held back so the test can kill the ADD there
[ "$CNI_COMMAND" = ADD ] && touch {marker} && sleep 60
exec {bin_dir}/flannelette-ipam
"""


@pytest.mark.parametrize("cni", ["inproc"], indirect=True)
def test_gc_after_an_add_killed_between_veth_and_state_removes_the_veth(cni):
    """Regression: ADD wrote its state only at the end, so a kill after the veth was made left
    a veth that GC, which works from the state files, never saw."""
    marker = os.path.join(cni.root, "ipam-started")
    with open(os.path.join(cni.bin_dir, "slow-ipam"), "w") as f:
        f.write(SLOW_IPAM.format(marker=marker, bin_dir=cni.bin_dir))
    os.chmod(os.path.join(cni.bin_dir, "slow-ipam"), 0o755)
    ipam = {"type": "slow-ipam", "dataDir": cni.ipam_dir, "subnetFile": cni.subnet_file}
    pod = cni.pod()
    proc = _start(cni, "ADD", "c-gc", pod, cni.conf(ipam=ipam))
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        assert proc.poll() is None and time.monotonic() < deadline, "ADD never reached IPAM"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the plugin and its IPAM child, mid-ADD
    proc.wait()
    proc.stdout.close()
    assert cni.node_veths() == {host_veth_name("c-gc", "eth0")}
    out = cni.run("GC", cni.conf("1.1.0", ipam=ipam, **{"cni.dev/valid-attachments": []}))
    assert (out.status, out.result) == (0, None), out
    assert cni.node_veths() == set() and _audit(cni).empty
    assert [line.split()[0] for line in pod.out("ip", "-br", "link").splitlines()] == ["lo"]
