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
from daemon.etcd.leases import LeaseManager
from daemon.logs import setup_logging
from daemon.etcd.registry import Registry
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


def _bridge_with_gateway(node, env) -> None:
    """cni0 as the plugin leaves it: a bridge holding the subnet's gateway (.1)."""
    node.ns.run("ip", "link", "add", "cni0", "type", "bridge")
    node.ns.run("ip", "addr", "add", str(env.subnet), "dev", "cni0")
    node.ns.run("ip", "link", "set", "cni0", "up")


def _node_with_bridge(u: Underlay):
    """A ready node with cni0 on its gateway; (node, its subnet, its lease key)."""
    node = u.node().start()
    env = node.wait_ready()
    _bridge_with_gateway(node, env)
    return node, env.subnet.network, f"{env.subnet.network.network_address}-24"


def _bridge_addresses(node) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for link in node.ip_json("addr", "show", "dev", "cni0")
            for a in link["addr_info"] if a["family"] == "inet"]


def _moved_line(node, old, new) -> str:
    lines = [line for line in node.log().splitlines() if "subnet moved from" in line]
    assert len(lines) == 1, node.log()
    assert "level=warning" in lines[0] and str(old) in lines[0] and str(new) in lines[0]
    assert "delete or restart" in lines[0]
    return lines[0]


def _taken_by_another_node(u: Underlay, key: str, ip: str = "10.77.0.99") -> None:
    """Another node holds `key` now: its own TTL lease, its PublicIP."""
    lease = json.loads(u.etcd.ctl("lease", "grant", "600", "-w", "json").stdout)["ID"]
    u.etcd.ctl("put", "--lease", format(lease, "x"), SUBNETS + key,
               json.dumps({"PublicIP": ip, "BackendType": "alloc"}))


def test_a_running_node_whose_subnet_another_node_took_moves_to_a_new_one(underlay):
    node, old, key = _node_with_bridge(underlay)
    since = time.time()
    _taken_by_another_node(underlay, key)
    new_env = node.wait_ready(since=since)
    new = new_env.subnet.network
    assert new != old and node.proc.poll() is None
    assert leases(underlay)[key]["PublicIP"] == "10.77.0.99"  # left to its new holder
    assert leases(underlay)[f"{new.network_address}-24"]["PublicIP"] == node.ip
    assert "10.77.0.99" in _moved_line(node, old, new)
    wait_for("cni0 on the new gateway", lambda: _bridge_addresses(node) == [str(new_env.subnet)],
             node=node)
    assert node.metric("subnet_moves_total") == 1 and node.http("/readyz")[0] == 200
    assert "Traceback" not in node.log()


def test_a_node_returning_to_a_subnet_another_node_took_starts_on_a_new_one(underlay):
    node, old, key = _node_with_bridge(underlay)
    node.stop()
    underlay.etcd.ctl("del", SUBNETS + key)  # expired while the node was away ...
    _taken_by_another_node(underlay, key)  # ... and another node took the subnet
    since = time.time()
    new_env = node.start().wait_ready(since=since)
    new = new_env.subnet.network
    assert new != old
    assert leases(underlay)[key]["PublicIP"] == "10.77.0.99"
    line = _moved_line(node, old, new)
    assert f"{old} is leased to 10.77.0.99" in line
    assert _bridge_addresses(node) == [str(new_env.subnet)]
    assert node.metric("subnet_moves_total") == 1


def test_two_daemons_with_one_public_ip_settle_on_one_holder(underlay):
    """The second daemon (no record of its own) takes the key, as flannel would; the first
    sees its etcd lease replaced, exits with one line, and restarted stays unready with a
    metric instead of taking the subnet back; the holder's lease is never overwritten."""
    first = underlay.node().start()
    env = first.wait_ready()
    key = f"{env.subnet.network.network_address}-24"
    second = underlay.node().start("--public-ip", first.ip)
    assert second.wait_ready().subnet == env.subnet
    started = time.monotonic()
    assert first.wait_exit(timeout=20) == 1
    settled = time.monotonic() - started
    last = first.log().strip().splitlines()[-1]
    assert "two daemons share one public IP" in last and "Traceback" not in first.log()
    holder = _lease_id(underlay, key)
    first.proc = None
    first.start()
    wait_for("the duplicate metric", lambda: first.metric("duplicate_public_ip") == 1, node=first)
    assert first.http("/readyz")[0] != 200
    time.sleep(2)
    assert _lease_id(underlay, key) == holder and second.proc.poll() is None
    print(f"\ntwo daemons, one public IP: settled {settled:.1f}s after the second started")
    second.stop()
    underlay.etcd.ctl("lease", "revoke", format(holder, "x"))  # the other daemon is gone
    first.wait_ready(timeout=30)  # its next look finds the subnet free


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
from daemon.etcd.registry import Registry
from daemon.etcd.watch import LeaseWatcher
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
