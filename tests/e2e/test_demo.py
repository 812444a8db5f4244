"""`make demo` / `make demo-down`: the demo comes up fully connected and goes away without trace."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.e2e.resources import Resources

pytestmark = pytest.mark.timeout(240)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.e2e.demo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=200)


def namespaces(stem: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(stem + "-")]


def test_demo_up_reports_a_connected_cluster_and_down_leaves_nothing():
    # A short path: the daemons' unix sockets live below it (108-byte limit).
    stem = f"flt-dm{secrets.token_hex(2)}"
    state_dir = f"/tmp/{stem}-state"
    opts = ("--state-dir", state_dir, "--stem", stem)
    try:
        up = demo("up", *opts)
        assert up.returncode == 0, up.stderr[-3000:]
        out = up.stdout
        assert "30/30 pod pairs reachable" in out, out
        assert out.count("/coreos.com/network/subnets/") == 3
        assert out.count("dev flannel.1 onlink") == 6  # each node routes the two others
        assert "make demo-down" in out
        with open(os.path.join(state_dir, "state.json")) as f:
            recorded = Resources.from_json(json.dumps(json.load(f)["resources"]))
        assert len(recorded.processes) == 4 and all(p.alive() for p in recorded.processes)
        assert len(namespaces(stem)) == 1 + 3 + 6  # underlay, nodes, pods
        assert demo("up", *opts).returncode == 1  # a second `up` refuses, changes nothing
        assert all(p.alive() for p in recorded.processes)
    finally:
        down = demo("down", *opts)
    assert down.returncode == 0, down.stderr
    assert namespaces(stem) == []
    assert recorded.leftovers() == []
    assert not os.path.exists(state_dir)
