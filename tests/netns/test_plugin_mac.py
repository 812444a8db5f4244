"""A requested MAC (podman --mac-address, the `mac` capability, args.cni.mac) on the pod's interface.

Run through the installed executable in both modes: in-process, and the lean shim
forwarding env + stdin to the warm daemon, where the handlers parse it.
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(120)


def _pod_mac(pod, ifname: str = "eth0") -> str:
    return json.loads(pod.out("ip", "-j", "link", "show", ifname))[0]["address"]


@pytest.mark.parametrize("source", ["cni_args", "args.cni.mac", "runtimeConfig.mac"])
def test_requested_mac_is_set_and_reported(cni, source):
    pod, mac = cni.pod(), "02:42:0a:f4:01:2a"
    extra, cni_args = {}, ""
    if source == "cni_args":
        cni_args = f"IgnoreUnknown=1;K8S_POD_NAME=web;MAC={mac.upper()};IP=10.244.1.77"
    elif source == "args.cni.mac":
        extra = {"args": {"cni": {"mac": mac}}}
    else:
        extra = {"runtimeConfig": {"mac": mac}}
    out = cni.run("ADD", cni.conf(**extra), cid="c-mac", pod=pod, cni_args=cni_args)
    assert out.status == 0, out
    pod_if = out.result["interfaces"][2]
    assert (pod_if["name"], pod_if["mac"]) == ("eth0", mac)
    assert _pod_mac(pod) == mac
    if source == "cni_args":  # a requested IP in the same CNI_ARGS still works
        assert out.result["ips"][0]["address"] == "10.244.1.77/24"
    check = cni.run("CHECK", cni.conf(prevResult=out.result, **extra), cid="c-mac", pod=pod)
    assert check.status == 0, check
    assert cni.delete(pod, "c-mac").status == 0
    assert not cni.node_veths() and cni.allocations() == {}


def test_runtime_config_mac_wins_over_cni_args(cni):
    pod = cni.pod()
    out = cni.run("ADD", cni.conf(args={"cni": {"mac": "02:00:00:00:00:02"}},
                                  runtimeConfig={"mac": "02:00:00:00:00:03"}),
                  cid="c-prec", pod=pod, cni_args="MAC=02:00:00:00:00:01")
    assert out.status == 0, out
    assert _pod_mac(pod) == out.result["interfaces"][2]["mac"] == "02:00:00:00:00:03"
    assert cni.delete(pod, "c-prec").status == 0


@pytest.mark.parametrize("cni_args, extra, field", [
    ("MAC=01:00:5e:00:00:01", {}, "CNI_ARGS MAC"),
    ("MAC=02:42:zz:00:00:01", {}, "CNI_ARGS MAC"),
    ("", {"runtimeConfig": {"mac": "00:00:00:00:00:00"}}, "runtimeConfig.mac"),
    ("", {"args": {"cni": {"mac": "02:42:00:00:01"}}}, "args.cni.mac"),
], ids=["multicast", "not-hex", "all-zero", "short"])
def test_bad_mac_is_code_7_and_leaves_nothing(cni, cni_args, extra, field):
    pod = cni.pod()
    cni.add(cni.pod(), "c-other")  # cni0 and the data dirs exist, so "nothing changed" is meaningful
    before, pod_before = cni.snapshot(), pod.out("ip", "-br", "link")
    out = cni.run("ADD", cni.conf(**extra), cid="c-badmac", pod=pod, cni_args=cni_args)
    assert out.status != 0 and out.result["code"] == 7, out
    assert f"'{field}'" in out.result["msg"], out.result
    assert "Traceback" not in out.stderr
    assert cni.snapshot() == before and pod.out("ip", "-br", "link") == pod_before
