"""DEL is forgiving; CHECK compares the kernel with prevResult."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- DEL


def test_del_removes_veth_allocation_and_state_and_is_idempotent(cni):
    pod = cni.pod()
    cni.add(pod, "c-del")
    assert cni.node_veths() and cni.allocations() and cni.state_files()
    for _ in range(2):
        out = cni.delete(pod, "c-del")
        assert (out.status, out.result) == (0, None), out
        assert cni.node_veths() == set() and cni.allocations() == {} and cni.state_files() == []
    assert [line.split()[0] for line in pod.out("ip", "-br", "link").splitlines()] == ["lo"]


def test_del_after_the_netns_vanished(cni):
    pod = cni.pod()
    cni.add(pod, "c-gone")
    pod.close()  # the runtime tore the sandbox down first: the veth pair died with it
    out = cni.run("DEL", cni.conf(), cid="c-gone", netns=pod.path)
    assert out.status == 0, out
    assert cni.allocations() == {} and cni.state_files() == []


def test_del_without_subnet_env_uses_what_add_saved(cni):
    pod = cni.pod()
    cni.add(pod, "c-nosubnet")
    os.unlink(cni.subnet_file)
    out = cni.delete(pod, "c-nosubnet")
    assert out.status == 0, out
    assert cni.node_veths() == set() and cni.allocations() == {}


def test_del_after_subnet_env_changed_releases_the_old_address(cni):
    pod = cni.pod()
    cni.add(pod, "c-moved")
    cni.write_subnet_env(subnet="10.244.9.1/24")
    assert cni.delete(pod, "c-moved").status == 0
    assert cni.node_veths() == set() and cni.allocations() == {}


def test_del_without_saved_state_finds_the_veth_by_its_name(cni):
    """A killed ADD saved no state: DEL still removes its veth and address."""
    pod = cni.pod()
    cni.add(pod, "c-nostate")
    os.unlink(os.path.join(cni.data_dir, "flt-net", "c-nostate:eth0.json"))
    assert cni.delete(pod, "c-nostate").status == 0
    assert cni.node_veths() == set() and cni.allocations() == {}


def test_del_of_an_unknown_container_succeeds_and_touches_nothing_else(cni):
    cni.add(cni.pod(), "c-keep")
    before = cni.snapshot()
    assert cni.delete(cni.pod(), "c-never-added").status == 0
    assert cni.snapshot() == before


# ---------------------------------------------------------------- CHECK


def _check(cni, pod, cid, prev, **extra):
    return cni.run("CHECK", cni.conf(prevResult=prev, **extra), cid=cid, pod=pod)


def test_check_passes_on_a_healthy_pod(cni):
    pod = cni.pod()
    prev = cni.add(pod, "c-check")
    out = _check(cni, pod, "c-check", prev)
    assert (out.status, out.result) == (0, None), out


@pytest.mark.parametrize("breakage, expected", [
    (lambda cni, pod, host: pod.run("ip", "addr", "flush", "dev", "eth0"), "address"),
    (lambda cni, pod, host: pod.run("ip", "route", "del", "10.244.0.0/16"), "route 10.244.0.0/16"),
    (lambda cni, pod, host: pod.run("ip", "link", "set", "eth0", "down"), "down"),
    (lambda cni, pod, host: pod.run("ip", "link", "set", "eth0", "address", "02:00:00:00:00:01"), "MAC"),
    (lambda cni, pod, host: cni.node.run("ip", "link", "set", host, "nomaster"), "not attached to cni0"),
    (lambda cni, pod, host: cni.node.run("ip", "link", "del", host), "missing"),
])
def test_check_reports_each_mismatch(cni, breakage, expected):
    pod = cni.pod()
    prev = cni.add(pod, "c-broken")
    breakage(cni, pod, prev["interfaces"][1]["name"])
    out = _check(cni, pod, "c-broken", prev)
    assert out.result["code"] == 104 and expected in out.result["msg"], out


def test_check_reports_a_released_allocation(cni):
    pod = cni.pod()
    prev = cni.add(pod, "c-released")
    ip = prev["ips"][0]["address"].split("/")[0]
    os.unlink(os.path.join(cni.ipam_dir, "flt-net", ip))
    out = _check(cni, pod, "c-released", prev)
    assert out.result["code"] == 104 and "c-released" in out.result["msg"], out


def test_check_needs_a_prev_result(cni):
    pod = cni.pod()
    cni.add(pod, "c-noprev")
    out = cni.run("CHECK", cni.conf(), cid="c-noprev", pod=pod)
    assert out.result["code"] == 7 and "prevResult" in out.result["msg"]
