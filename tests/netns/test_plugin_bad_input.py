"""Bad input through the real executable: the right code, JSON only on stdout, nothing changed."""
from __future__ import annotations

import json
import os

import pytest

from conf.cni import MAX_STDIN

pytestmark = pytest.mark.timeout(120)


def _garble(cni):
    with open(cni.subnet_file, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=not-an-address\nFLANNEL_MTU=1450\n")


def _not_a_netns(cni):
    path = os.path.join(cni.root, "plain-file")
    with open(path, "w") as f:
        f.write("x")
    return path


def _nested(conf: dict, levels: int) -> bytes:
    return json.dumps(conf).encode()[:-1] + b', "x": ' + b"[" * levels + b"]" * levels + b"}"


# (id, command, how to mangle (stdin, env kwargs), expected code, a word the message must hold)
CASES = [
    ("invalid-json", "ADD", lambda cni, conf, kw: (b'{"cniVersion": "1.0.0", ', kw), 6, "JSON"),
    ("unknown-version", "ADD", lambda cni, conf, kw: ({**conf, "cniVersion": "9.9.9"}, kw), 1, "9.9.9"),
    ("missing-container-id", "ADD", lambda cni, conf, kw: (conf, {**kw, "cid": ""}), 4, "CNI_CONTAINERID"),
    ("container-id-path", "ADD", lambda cni, conf, kw: (conf, {**kw, "cid": "../../etc"}), 4, "CNI_CONTAINERID"),
    ("container-id-path-del", "DEL", lambda cni, conf, kw: (conf, {**kw, "cid": "../../etc"}), 4, "CNI_CONTAINERID"),
    ("ifname-16-chars", "ADD", lambda cni, conf, kw: (conf, {**kw, "ifname": "a" * 16}), 4, "CNI_IFNAME"),
    ("subnet-env-missing", "ADD", lambda cni, conf, kw: (os.unlink(cni.subnet_file) or conf, kw), 11,
     "flanneletted"),
    ("subnet-env-garbled", "ADD", lambda cni, conf, kw: (_garble(cni) or conf, kw), 7, "FLANNEL_SUBNET"),
    ("netns-not-a-netns", "ADD", lambda cni, conf, kw: (conf, {**kw, "netns": _not_a_netns(cni)}), 8,
     "not a network namespace"),
    ("netns-missing", "ADD", lambda cni, conf, kw: (conf, {**kw, "netns": "/run/netns/flt-no-such-ns"}), 8,
     "flt-no-such-ns"),
    ("stdin-over-1mib", "ADD", lambda cni, conf, kw: (
        json.dumps({**conf, "pad": "x" * MAX_STDIN}).encode(), kw), 6, "limit"),
    ("nested-10000-levels", "ADD", lambda cni, conf, kw: (_nested(conf, 10_000), kw), 6, "nested"),
    ("nested-100-levels", "ADD", lambda cni, conf, kw: (_nested(conf, 100), kw), 6, "nested"),  # the shim parses it
    ("missing-cni-version", "ADD", lambda cni, conf, kw: (
        {k: v for k, v in conf.items() if k != "cniVersion"}, kw), 7, "cniVersion"),
    ("binary-garbage", "ADD", lambda cni, conf, kw: (bytes(range(256)) * 4, kw), 6, "JSON"),
    ("container-id-slash", "ADD", lambda cni, conf, kw: (conf, {**kw, "cid": "/"}), 4, "CNI_CONTAINERID"),
    ("container-id-huge", "ADD", lambda cni, conf, kw: (conf, {**kw, "cid": "c" * 100_000}), 4, "CNI_CONTAINERID"),
    ("bad-mtu", "ADD", lambda cni, conf, kw: ({**conf, "mtu": -1}, kw), 7, "mtu"),
    ("mtu-below-68", "ADD", lambda cni, conf, kw: ({**conf, "mtu": 1}, kw), 7, "mtu"),  # was 999 after cni0 changed
    ("ipam-route-garbage", "ADD", lambda cni, conf, kw: (
        {**conf, "ipam": {**conf["ipam"], "routes": [{"dst": "garbage"}]}}, kw), 7, "routes"),
    ("bad-bridge-name", "ADD", lambda cni, conf, kw: ({**conf, "bridge": "a/b"}, kw), 7, "bridge"),
]


@pytest.mark.parametrize("name, command, mangle, code, word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(cni, name, command, mangle, code, word):
    cni.add(cni.pod(), "c-existing")  # a node with some state that must stay as it is
    pod = cni.pod()
    before, pod_before = cni.snapshot(), pod.out("ip", "-br", "link")
    stdin, kw = mangle(cni, cni.conf(), {"cid": "c-bad", "pod": pod, "ifname": "eth0"})
    out = cni.run(command, stdin, **kw)

    assert out.status != 0 and out.result is not None, out
    assert out.result["code"] == code and word in out.result["msg"], out.result
    assert set(out.result) <= {"cniVersion", "code", "msg", "details"}
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1, out.stderr
    assert cni.snapshot() == before and pod.out("ip", "-br", "link") == pod_before


def test_version_answers_without_config(cni):
    out = cni.run("VERSION", b"")
    assert out.status == 0 and "1.1.0" in out.result["supportedVersions"]


IPAM_CASES = [
    ("nested-10000-levels", lambda conf, kw: (_nested(conf, 10_000), kw), 6, "nested"),
    ("missing-cni-version", lambda conf, kw: ({k: v for k, v in conf.items() if k != "cniVersion"}, kw), 7,
     "cniVersion"),
    ("binary-garbage", lambda conf, kw: (bytes(range(256)) * 4, kw), 6, "JSON"),
    ("stdin-over-1mib", lambda conf, kw: (json.dumps({**conf, "pad": "x" * MAX_STDIN}).encode(), kw), 6, "limit"),
    ("container-id-path", lambda conf, kw: (conf, {**kw, "cid": "../../etc"}), 4, "CNI_CONTAINERID"),
]


@pytest.mark.parametrize("cni", ["inproc"], indirect=True)
@pytest.mark.parametrize("name, mangle, code, word", IPAM_CASES, ids=[c[0] for c in IPAM_CASES])
def test_ipam_bad_input_is_refused_and_changes_nothing(cni, name, mangle, code, word):
    cni.add(cni.pod(), "c-existing")
    pod = cni.pod()
    conf = {"cniVersion": "1.0.0", "name": "flt-net", "type": "bridge",
            "ipam": {"type": "flannelette-ipam", "dataDir": cni.ipam_dir, "subnetFile": cni.subnet_file}}
    before = cni.snapshot()
    stdin, kw = mangle(conf, {"cid": "c-bad", "pod": pod, "ifname": "eth0"})
    out = cni.run("ADD", stdin, plugin="flannelette-ipam", **kw)
    assert out.status != 0 and out.result is not None, out
    assert out.result["code"] == code and word in out.result["msg"], out.result
    assert "Traceback" not in out.stderr and cni.snapshot() == before
