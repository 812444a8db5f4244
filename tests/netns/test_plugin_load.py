"""Load: many pods added then deleted 16 at a time through the installed executable.

Once with the fast-path server up, once with it down (the shim finds nobody on the
socket and runs the handlers in-process, as on a node whose daemon is stopped). All
pods are added, then all deleted; after the ADDs every pod holds its own address
and the store, the state files and cni0's ports say exactly that; after the DELs
nothing is left. Prints ops/s of each phase and the wall time (the README quotes
them). Pod counts: FAST_PODS and DOWN_PODS, more with FLT_SOAK=1.
"""
from __future__ import annotations

import ipaddress
import json
import secrets
import sys
import time

import pytest

from tests.support.cni import Outcome, parse_stdout
from tests.support.crash import audit_stores, trial_count
from tests.support.netns import sh

pytestmark = pytest.mark.timeout(1800)
AT_ONCE = 16
SUBNET = "10.244.0.0/22"  # 1021 pod addresses: every pod of the largest run alive at once
FAST_PODS = trial_count(500, 1000)
DOWN_PODS = trial_count(500, 1000)


class Pods:
    """Many pod namespaces, made and removed by one `ip -batch` each way."""

    def __init__(self, count: int):
        tag = secrets.token_hex(3)
        self.names = [f"flt-ld{tag}-{i}" for i in range(count)]
        self._batch("netns add")

    def _batch(self, verb: str) -> None:
        sh("ip", "-force", "-batch", "-", check=verb == "netns add",
           input="".join(f"{verb} {name}\n" for name in self.names).encode(), timeout=600)

    def close(self) -> None:
        self._batch("netns delete")


# Runs inside the node netns and execs the plugin directly, as a runtime on the node does
# (an `ip netns exec` per call would cost more than a fast-path call itself).
DRIVER = r"""
import json, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
exe, cni_path, command, at_once = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stdin, pods = sys.argv[5].encode(), json.loads(sys.argv[6])

def one(i):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": f"load-{i}",
           "CNI_NETNS": f"/run/netns/{pods[i]}", "CNI_IFNAME": "eth0", "CNI_PATH": cni_path}
    proc = subprocess.run([exe], input=stdin, env=env, capture_output=True, timeout=300)
    return proc.returncode, proc.stdout.decode()

started = time.monotonic()
with ThreadPoolExecutor(at_once) as pool:
    outcomes = list(pool.map(one, range(len(pods))))
print(json.dumps({"seconds": time.monotonic() - started, "outcomes": outcomes}))
"""


def _drive(cni, command: str, pods: list[str]) -> tuple[float, list[Outcome]]:
    """`command` for every pod, AT_ONCE at a time; (seconds, outcomes in pod order)."""
    proc = cni.node.run(sys.executable, "-c", DRIVER, cni.exe(), cni.bin_dir, command, str(AT_ONCE),
                        json.dumps(cni.conf()), json.dumps(pods), timeout=1200)
    report = json.loads(proc.stdout)
    return report["seconds"], [Outcome(status, parse_stdout(out.encode()), "") for status, out in report["outcomes"]]


def _cni0_ports(cni) -> set[str]:
    links = json.loads(cni.node.out("ip", "-j", "link", "show", "master", "cni0"))
    return {link["ifname"] for link in links}


def _load_run(cni, count: int, label: str) -> str:
    cni.write_subnet_env(subnet="10.244.0.1/22")
    pods = Pods(count)
    try:
        wall = time.monotonic()
        add_time, adds = _drive(cni, "ADD", pods.names)
        failed = [(i, o) for i, o in enumerate(adds) if o.status != 0]
        assert not failed, f"{len(failed)} ADDs failed, first: {failed[0]}"
        addresses = [o.result["ips"][0]["address"].split("/")[0] for o in adds]
        assert len(set(addresses)) == count, "an address was handed out twice"
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network(SUBNET) for a in addresses)
        view = audit_stores(f"{cni.ipam_dir}/flt-net", f"{cni.data_dir}/flt-net", SUBNET)
        assert view.reservations == {a: (f"load-{i}", "eth0") for i, a in enumerate(addresses)}
        assert set(view.states) == {(f"load-{i}", "eth0") for i in range(count)}
        assert not (view.ipam_temp or view.staging) and len(view.owner_markers) == count
        host_veths = {o.result["interfaces"][1]["name"] for o in adds}
        assert len(host_veths) == count and _cni0_ports(cni) == host_veths

        del_time, dels = _drive(cni, "DEL", pods.names)
        failed = [(i, o) for i, o in enumerate(dels) if (o.status, o.result) != (0, None)]
        assert not failed, f"{len(failed)} DELs failed, first: {failed[0]}"
        wall = time.monotonic() - wall
        view = audit_stores(f"{cni.ipam_dir}/flt-net", f"{cni.data_dir}/flt-net", SUBNET)
        assert view.empty, view
        assert cni.node_veths() == set() and _cni0_ports(cni) == set()
    finally:
        pods.close()
    line = (f"{label}: {count} ADD + {count} DEL, {AT_ONCE} at a time: ADD {count / add_time:.1f} ops/s "
            f"({add_time:.1f} s), DEL {count / del_time:.1f} ops/s ({del_time:.1f} s), "
            f"{2 * count / (add_time + del_time):.1f} ops/s overall, wall {wall:.1f} s; "
            f"{count} distinct addresses, nothing left")
    print(line)
    return line


@pytest.mark.parametrize("cni", ["fastpath"], indirect=True)
@pytest.mark.parametrize("count", [FAST_PODS], ids=lambda n: f"{n}pods-{2 * n}ops")
def test_load_with_the_fast_path_up(cni, count):
    _load_run(cni, count, "fast path up")
    assert f"served ADD for container 'load-{count - 1}'" in cni.server.log()


@pytest.mark.parametrize("cni", ["fastpath"], indirect=True)
@pytest.mark.parametrize("count", [DOWN_PODS], ids=lambda n: f"{n}pods-{2 * n}ops")
def test_load_with_the_daemon_down(cni, count):
    cni.server.stop()  # the socket path stays configured: the shim falls back to in-process
    _load_run(cni, count, "daemon down (in-process)")
