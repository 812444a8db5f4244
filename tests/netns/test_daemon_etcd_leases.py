"""flanneletted's leases against a real etcd, daemons in netns nodes (alloc backend: no data plane).

The data plane side (vxlan entries, restart keeping the VTEP MAC, etcd outage) is in
test_daemon_dataplane.py; TLS and auth in test_daemon_etcd_security.py.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import time

import pytest

from tests.support.flanneletted import (ALLOC_CONFIG, ETCD_IP, PREFIX, SUBNETS, Underlay,
                                         underlay, wait_for)  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)

ETCD_CONFIG = ALLOC_CONFIG  # what the `underlay` fixture puts in etcd


def leases(u: Underlay) -> dict[str, dict]:
    return {k[len(SUBNETS):]: json.loads(v) for k, v in u.etcd.get_prefix(SUBNETS).items()}


def test_two_nodes_get_distinct_subnets_subnet_env_and_health(underlay):
    a, b = underlay.node().start(), underlay.node().start()
    env_a, env_b = a.wait_ready(), b.wait_ready()
    assert env_a.subnet.network != env_b.subnet.network
    for env in (env_a, env_b):
        assert [str(n) for n in env.networks] == ["10.244.0.0/16"]
        assert env.subnet.ip == env.subnet.network.network_address + 1  # FLANNEL_SUBNET is .1/24
        assert env.mtu == 1500 and env.ipmasq is False
    held = leases(underlay)
    assert {v["PublicIP"] for v in held.values()} == {a.ip, b.ip}
    assert held[f"{env_a.subnet.network.network_address}-24"]["BackendType"] == "alloc"
    assert a.http("/healthz")[0] == 200 and a.http("/readyz")[0] == 200
    assert a.http("/nope")[0] == 404
    wait_for("both leases known", lambda: a.metric("leases_known") == 2, node=a)
    assert a.metric("ready") == 1 and a.metric("reconcile_runs_total", trigger="etcd") >= 1


RACER = """
import os, sys, time
from conf.daemon import DaemonSettings
from conf.flannel import LeaseAttrs, load_network_config
from daemon.leases import LeaseManager
from daemon.logs import setup_logging
from daemon.registry import Registry
setup_logging(0)
endpoint, count, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
children = []
for i in range(1, count + 1):  # imported once, forked: each racer has its own etcd connection
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            registry = Registry(DaemonSettings(etcd_endpoints=endpoint))
            manager = LeaseManager(registry, load_network_config(registry.get_config()), 600, 60)
            while not os.path.exists(go):
                time.sleep(0.005)
            lease = manager.acquire(LeaseAttrs(PublicIP=f"10.77.1.{i}", BackendType="alloc"))
            os.write(1, (lease.key + "\\n").encode())  # one write: racers share the pipe
            code = 0
        finally:
            os._exit(code)
    children.append(pid)
time.sleep(1.0)  # every racer connected and waiting
open(go, "w").close()
sys.exit(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children))
"""


def test_twenty_racing_nodes_get_twenty_distinct_leases(underlay):
    # 40 subnets for 20 nodes: random picks collide, so the create-if-absent txn must decide.
    underlay.etcd.put(PREFIX + "/config", '{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",'
                      ' "SubnetMax": "10.244.40.0", "Backend": {"Type": "alloc"}}')
    proc = underlay.python(RACER, underlay.etcd.endpoint, "20", os.path.join(underlay.dir, "go"))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    keys = proc.stdout.decode().split()
    held = leases(underlay)
    assert len(keys) == 20 and len(set(keys)) == 20 and set(keys) == set(held)
    assert {v["PublicIP"] for v in held.values()} == {f"10.77.1.{i}" for i in range(1, 21)}
    print(f"\n20 racers, {proc.stderr.decode().count('lost a race')} lost races retried")


def test_a_restarted_daemon_keeps_its_subnet_even_after_sigkill(underlay):
    node = underlay.node().start()
    first = node.wait_ready().subnet
    for sig in (signal.SIGTERM, signal.SIGKILL):
        node.stop(sig)
        since = time.time()
        assert node.start().wait_ready(since=since).subnet == first
    assert len(leases(underlay)) == 1


def test_the_subnet_env_subnet_is_reused_when_the_lease_is_gone(underlay):
    node = underlay.node().start()
    first = node.wait_ready().subnet
    node.stop()
    underlay.etcd.ctl("del", "--prefix", SUBNETS)
    since = time.time()
    assert node.start().wait_ready(since=since).subnet == first


def _lease_id(u: Underlay, key: str) -> int:
    out = json.loads(u.etcd.ctl("get", SUBNETS + key, "-w", "json").stdout)
    return int(out["kvs"][0]["lease"])


def test_a_revoked_lease_is_taken_back_with_the_same_subnet(underlay):
    node = underlay.node().start()
    env = node.wait_ready()
    key = f"{env.subnet.network.network_address}-24"
    old = _lease_id(underlay, key)
    underlay.etcd.ctl("lease", "revoke", format(old, "x"))
    wait_for("the lease taken back", lambda: key in leases(underlay) and _lease_id(underlay, key) != old,
             node=node)
    assert node.proc.poll() is None
    wait_for("the takeback metric", lambda: node.metric("lease_takebacks_total") == 1, node=node)
    assert "lease revoked or expired, taking it back" in node.log()


def test_a_subnet_now_held_by_another_node_stops_the_daemon_clearly(underlay):
    node = underlay.node().start()
    env = node.wait_ready()
    key = f"{env.subnet.network.network_address}-24"
    underlay.etcd.put(SUBNETS + key, '{"PublicIP":"10.77.0.99","BackendType":"alloc"}')
    assert node.wait_exit() == 1
    last = node.log().strip().splitlines()[-1]
    assert last.startswith("flanneletted: subnet ") and "now leased to 10.77.0.99" in last
    assert "Traceback" not in node.log()


def test_short_ttl_leases_are_renewed_before_they_expire(underlay):
    node = underlay.node().start("--lease-ttl", "6")
    env = node.wait_ready()
    key = f"{env.subnet.network.network_address}-24"
    first = _lease_id(underlay, key)
    wait_for("two renewals", lambda: node.metric("lease_renewals_total") >= 2, timeout=15, node=node)
    assert _lease_id(underlay, key) != first
    ttl = json.loads(underlay.etcd.ctl("lease", "timetolive", format(_lease_id(underlay, key), "x"),
                                       "-w", "json").stdout)["ttl"]
    assert 0 < ttl <= 6


def test_a_missing_config_is_waited_for_and_said_in_the_log(underlay):
    underlay.etcd.ctl("del", PREFIX + "/config")
    node = underlay.node().start()
    wait_for("the waiting log line", lambda: "network config not found in etcd" in node.log(), node=node)
    assert node.http("/healthz")[0] == 200 and node.http("/readyz")[0] == 503
    underlay.etcd.put(PREFIX + "/config", ALLOC_CONFIG)
    assert ipaddress.ip_network("10.244.0.0/16").supernet_of(node.wait_ready().subnet.network)


def test_an_unreachable_etcd_gives_one_line_and_a_non_zero_exit(underlay):
    node = underlay.node()
    node.proc = node.ns.popen(*node.argv("--etcd-endpoints", f"http://{ETCD_IP}:1",
                                         "--etcd-dial-timeout", "1"),
                              stdout=-1, stderr=-1, start_new_session=True)
    out, err = node.proc.communicate(timeout=30)
    assert node.proc.returncode == 1 and out == b""
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"flanneletted: cannot reach etcd at http://{ETCD_IP}:1")
    assert "Traceback" not in err.decode()


def test_a_dead_first_endpoint_fails_over_to_the_next(underlay):
    node = underlay.node().start("--etcd-endpoints", f"http://{ETCD_IP}:1,{underlay.etcd.endpoint}")
    assert node.wait_ready().subnet is not None


COMPACTION = """
import json, sys, threading
from conf.daemon import DaemonSettings
from daemon.metrics import Metrics
from daemon.registry import Registry
from daemon.watch import LeaseWatcher
registry = Registry(DaemonSettings(etcd_endpoints=sys.argv[1]))
changed = threading.Event()
watcher = LeaseWatcher(registry, Metrics(), on_change=changed.set)
watcher.revision = int(sys.argv[2])   # as if we had been away since then
watcher.start()
assert changed.wait(20), "no change reported"
watcher.stop()
print(json.dumps(sorted(k.lease.key for k in watcher.leases())))
"""


def test_a_watch_behind_a_compaction_lists_again(underlay):
    value = '{"PublicIP":"10.77.1.%d","BackendType":"alloc"}'
    underlay.etcd.put(SUBNETS + "10.244.1.0-24", value % 1)
    underlay.etcd.put(SUBNETS + "10.244.2.0-24", value % 2)
    status = json.loads(underlay.etcd.ctl("endpoint", "status", "-w", "json").stdout)
    behind = status[0]["Status"]["header"]["revision"]
    underlay.etcd.ctl("del", SUBNETS + "10.244.1.0-24")
    underlay.etcd.put(SUBNETS + "10.244.3.0-24", value % 3)
    status = json.loads(underlay.etcd.ctl("endpoint", "status", "-w", "json").stdout)
    underlay.etcd.ctl("compaction", str(status[0]["Status"]["header"]["revision"]))
    proc = underlay.python(COMPACTION, underlay.etcd.endpoint, str(behind))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads(proc.stdout) == ["10.244.2.0-24", "10.244.3.0-24"]
    assert "listing again" in proc.stderr.decode()
