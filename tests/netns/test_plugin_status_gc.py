"""STATUS and GC."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(120)


def test_status_ready_with_a_valid_subnet_env(cni):
    out = cni.run("STATUS", cni.conf("1.1.0"))
    assert (out.status, out.result) == (0, None), out


@pytest.mark.parametrize("content, reason", [
    (None, "does not exist"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "FLANNEL_SUBNET"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=big\nFLANNEL_IPMASQ=true\n",
     "FLANNEL_MTU"),
])
def test_status_not_available_says_why(cni, content, reason):
    if content is None:
        os.unlink(cni.subnet_file)
    else:
        with open(cni.subnet_file, "w") as f:
            f.write(content)
    out = cni.run("STATUS", cni.conf("1.1.0"))
    assert out.status != 0 and out.result["code"] == 50, out
    assert reason in out.result["msg"] and cni.subnet_file in out.result["msg"]


def test_status_needs_cni_version_1_1(cni):
    out = cni.run("STATUS", cni.conf("1.0.0"))
    assert out.result["code"] == 1


def test_gc_removes_only_attachments_the_runtime_no_longer_knows(cni):
    keep, drop = cni.pod(), cni.pod()
    kept = cni.add(keep, "c-keep", version="1.1.0")
    dropped = cni.add(drop, "c-drop", version="1.1.0")
    valid = [{"containerID": "c-keep", "ifname": "eth0"}]
    out = cni.run("GC", cni.conf("1.1.0", **{"cni.dev/valid-attachments": valid}))
    assert (out.status, out.result) == (0, None), out

    assert cni.node_veths() == {kept["interfaces"][1]["name"]}
    assert dropped["interfaces"][1]["name"] not in cni.node_links()
    assert list(cni.allocations()) == [kept["ips"][0]["address"].split("/")[0]]
    assert cni.state_files() == ["c-keep:eth0.json"]
    keep.run("ping", "-c1", "-W2", "10.244.1.1")
    assert [line.split()[0] for line in drop.out("ip", "-br", "link").splitlines()] == ["lo"]


def test_gc_with_nothing_valid_clears_everything_and_needs_the_list(cni):
    for cid in ("c-a", "c-b"):
        cni.add(cni.pod(), cid, version="1.1.0")
    out = cni.run("GC", cni.conf("1.1.0"))
    assert out.result["code"] == 7 and "valid-attachments" in out.result["msg"]
    assert len(cni.node_veths()) == 2
    out = cni.run("GC", cni.conf("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert out.status == 0, out
    assert cni.node_veths() == set() and cni.allocations() == {} and cni.state_files() == []
