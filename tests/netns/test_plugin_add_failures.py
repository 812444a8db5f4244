"""ADD that fails leaves nothing behind; ADD retried after a kill gives the same address."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.cni import cni_env

pytestmark = pytest.mark.timeout(180)


def test_wrong_bridge_address_is_explained(cni):
    cni.node.run("ip", "link", "add", "cni0", "type", "bridge")
    cni.node.run("ip", "addr", "add", "10.244.7.1/24", "dev", "cni0")
    pod = cni.pod()
    out = cni.run("ADD", cni.conf(), cid="c-bridge", pod=pod)
    assert out.status != 0 and out.result["code"] == 102
    assert "10.244.7.1/24" in out.result["msg"] and "10.244.1.1/24" in out.result["msg"]
    assert "ip link delete cni0" in out.result["details"]
    assert cni.node_veths() == set() and cni.allocations() == {}
    assert json.loads(pod.out("ip", "-j", "link", "show"))[0]["ifname"] == "lo"


def test_exhausted_range_leaves_no_veth_and_no_allocation(cni):
    ipam = {"type": "flannelette-ipam", "dataDir": cni.ipam_dir,
            "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.5", "rangeEnd": "10.244.1.5"}]]}
    first, second = cni.pod(), cni.pod()
    cni.add(first, "c-first", ipam=ipam)
    before = cni.snapshot()
    out = cni.run("ADD", cni.conf(ipam=ipam), cid="c-second", pod=second)
    assert out.result["code"] == 100, out
    assert cni.snapshot() == before
    assert [link["ifname"] for link in json.loads(second.out("ip", "-j", "link", "show"))] == ["lo"]


def test_failure_after_ipam_rolls_back_veth_and_address(cni):
    """An IPAM route whose gateway the pod cannot reach fails the last netlink step."""
    ipam = {"type": "flannelette-ipam", "dataDir": cni.ipam_dir,
            "routes": [{"dst": "192.168.0.0/16", "gw": "10.99.0.1"}]}
    pod = cni.pod()
    cni.add(cni.pod(), "c-ok")  # cni0 and one pod exist before the failing ADD
    links, allocations = sorted(cni.node_links()), cni.allocations()
    out = cni.run("ADD", cni.conf(ipam=ipam), cid="c-late", pod=pod)
    assert out.status != 0 and "192.168.0.0/16" in out.result["msg"], out
    assert sorted(cni.node_links()) == links and cni.allocations() == allocations
    assert cni.state_files() == ["c-ok:eth0.json"]
    assert [link["ifname"] for link in json.loads(pod.out("ip", "-j", "link", "show"))] == ["lo"]


def test_delegated_ipam_failure_keeps_its_code_and_removes_the_veth(cni):
    store = os.path.join(cni.root, "host-local")
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": store}
    result = cni.add(cni.pod(), "c-hl", ipam=ipam)
    assert os.listdir(os.path.join(store, "flt-net")).count(result["ips"][0]["address"].split("/")[0]) == 1

    bad = cni.conf(ipam={"type": "host-local", "dataDir": store})  # no ranges: host-local refuses
    direct = cni.run("ADD", bad, cid="c-hl2", pod=cni.pod(), plugin="host-local")
    out = cni.run("ADD", bad, cid="c-hl2", pod=cni.pod())
    assert direct.status != 0 and out.result["code"] == direct.result["code"], (out, direct)
    assert direct.result["msg"] in out.result["msg"]
    assert len(cni.node_veths()) == 1
    out = cni.run("ADD", cni.conf(ipam={"type": "no-such-ipam"}), cid="c-none", pod=cni.pod())
    assert out.result["code"] == 105 and "no-such-ipam" in out.result["msg"]
    assert len(cni.node_veths()) == 1


def test_interface_already_in_the_pod_is_refused_and_nothing_changes(cni):
    cni.add(cni.pod(), "c-other")
    pod = cni.pod()
    pod.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    before = cni.snapshot()
    out = cni.run("ADD", cni.conf(), cid="c-exists", pod=pod)
    assert out.result["code"] == 103 and "eth0" in out.result["msg"]
    assert cni.snapshot() == before
    assert pod.out("ip", "-br", "link", "show", "eth0").split()[0].startswith("eth0@")


def test_retry_after_a_half_built_add_gives_the_same_address(cni):
    """The aftermath of a killed ADD: veth present, address held, pod iface unconfigured, no state."""
    pod = cni.pod()
    first = cni.add(pod, "c-retry")
    for name in cni.state_files():
        os.unlink(os.path.join(cni.data_dir, "flt-net", name))
    pod.run("ip", "addr", "flush", "dev", "eth0")
    pod.run("ip", "link", "set", "eth0", "down")

    second = cni.add(pod, "c-retry")
    assert second["ips"] == first["ips"]
    assert second["interfaces"][1]["name"] == first["interfaces"][1]["name"]
    assert len(cni.node_veths()) == 1 and len(cni.allocations()) == 1
    pod.run("ping", "-c1", "-W2", "10.244.1.1")


def test_retry_after_kill_at_any_point_succeeds(cni):
    """SIGKILL the plugin at several points of an ADD, then retry it like kubelet does."""
    pod = cni.pod()
    stdin = json.dumps(cni.conf()).encode()
    env = cni_env("ADD", container_id="c-kill", netns=pod.path, ifname="eth0", cni_path=cni.bin_dir)
    started = time.monotonic()
    results = [cni.add(pod, "c-kill")]
    duration = time.monotonic() - started  # kill points spread over the part where netlink work happens
    for fraction in (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0):
        delay = duration * fraction
        proc = subprocess.Popen(["ip", "netns", "exec", cni.node.name, cni.exe()], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.stdin.write(stdin)
        proc.stdin.close()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results.append(cni.add(pod, "c-kill"))
    assert all(r["ips"] == results[0]["ips"] for r in results)
    assert cni.state_files() == ["c-kill:eth0.json"]
    assert len(cni.node_veths()) == 1 and len(cni.allocations()) == 1
    assert cni.delete(pod, "c-kill").status == 0
    assert cni.node_veths() == set() and cni.allocations() == {}
