"""flannelette-ipam's handlers in-process through conf.dispatch (no root needed)."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from conf.dispatch import run
from ipam.plugin import HANDLERS

SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = SUBNET_ENV + "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n"


class Node:
    """A tmp subnet.env + data dir and a way to call the handlers as a runtime would."""

    def __init__(self, tmp_path, env_text=SUBNET_ENV):
        self.subnet_file = tmp_path / "subnet.env"
        self.data_dir = tmp_path / "data"
        if env_text is not None:
            self.subnet_file.write_text(env_text)

    def config(self, version="1.1.0", ipam=None, **extra):
        base = {"type": "flannelette-ipam", "subnetFile": str(self.subnet_file), "dataDir": str(self.data_dir)}
        return {"cniVersion": version, "name": "cbr0", "type": "bridge", "ipam": {**base, **(ipam or {})}, **extra}

    def call(self, command, cid="c1", ifname="eth0", cni_args="", **conf):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/p",
               "CNI_IFNAME": ifname, "CNI_ARGS": cni_args}
        status, out = run(HANDLERS, env, json.dumps(self.config(**conf)).encode())
        return status, json.loads(out) if out else None

    def held(self):
        d = self.data_dir / "cbr0"
        if not d.exists():
            return {}
        return {n: (d / n).read_bytes().decode() for n in os.listdir(d) if n[0].isdigit() or ":" in n}


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


# ---------------------------------------------------------------- ADD


def test_add_result_has_address_gateway_and_flannel_route(node):
    status, out = node.call("ADD")
    assert status == 0
    assert out == {"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
                   "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}], "dns": {}}
    assert node.held() == {"10.244.1.2": "c1\r\neth0"}


def test_add_renders_old_versions(node):
    status, out = node.call("ADD", version="0.3.1")
    assert status == 0 and out["ips"] == [{"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]


def test_dual_stack_from_subnet_env(tmp_path):
    node = Node(tmp_path, DUAL_ENV)
    status, out = node.call("ADD")
    assert status == 0
    assert out["ips"] == [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"},
                          {"address": "fc00:0:0:1::2/64", "gateway": "fc00:0:0:1::1"}]
    assert out["routes"] == [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"},
                             {"dst": "fc00::/48", "gw": "fc00:0:0:1::1"}]


def test_add_twice_returns_the_same_address(node):
    first = node.call("ADD")
    assert node.call("ADD") == first and len(node.held()) == 1


def test_explicit_ranges_need_no_subnet_env_and_use_ipam_routes(tmp_path):
    node = Node(tmp_path, env_text=None)
    status, out = node.call("ADD", ipam={"ranges": [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.100"}]],
                                         "routes": [{"dst": "0.0.0.0/0"}]})
    assert status == 0 and out["ips"] == [{"address": "10.9.0.100/24", "gateway": "10.9.0.1"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}]


def test_ipam_routes_replace_the_flannel_routes(node):
    _, out = node.call("ADD", ipam={"routes": [{"dst": "192.168.0.0/16", "gw": "10.244.1.254"}]})
    assert out["routes"] == [{"dst": "192.168.0.0/16", "gw": "10.244.1.254"}]
    _, out = node.call("ADD", cid="c2", ipam={"routes": []})
    assert "routes" not in out


def test_resolv_conf_fills_the_result_dns(node, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# written by the operator\nnameserver 10.96.0.10\n; old\nnameserver 10.96.0.11\n"
                      "domain cluster.local\nsearch a.local\nsearch svc.cluster.local cluster.local\n"
                      "options ndots:5\noptions edns0\n")
    status, out = node.call("ADD", ipam={"resolvConf": str(resolv)})
    assert status == 0 and out["dns"] == {
        "nameservers": ["10.96.0.10", "10.96.0.11"], "domain": "cluster.local",
        "search": ["svc.cluster.local", "cluster.local"], "options": ["ndots:5", "edns0"]}


def test_unreadable_resolv_conf_is_a_config_error_that_allocates_nothing(node, tmp_path):
    status, out = node.call("ADD", ipam={"resolvConf": str(tmp_path / "missing")})
    assert (status, out["code"]) == (1, 7) and "ipam.resolvConf" in out["msg"] and "missing" in out["msg"]
    assert node.held() == {}


@pytest.mark.parametrize("how", ["cni_args", "args", "runtimeConfig"])
def test_requested_address_three_ways(node, how):
    kw = {"cni_args": "IgnoreUnknown=1;IP=10.244.1.50"} if how == "cni_args" else \
        {"args": {"cni": {"ips": ["10.244.1.50"]}}} if how == "args" else \
        {"runtimeConfig": {"ips": ["10.244.1.50/24"]}}
    status, out = node.call("ADD", **kw)
    assert status == 0 and out["ips"][0]["address"] == "10.244.1.50/24"


@pytest.mark.parametrize("kw,code,needle", [
    ({"cni_args": "IP=banana"}, 4, "CNI_ARGS.IP"),
    ({"args": {"cni": {"ips": ["10.244.1.5", "nope"]}}}, 7, "args.cni.ips[1]"),
    ({"runtimeConfig": {"ips": "10.244.1.5"}}, 7, "runtimeConfig.ips"),
    ({"args": {"cni": ["10.244.1.5"]}}, 7, "'args.cni'"),
    ({"cni_args": "IP=10.99.0.5"}, 101, "not inside any configured range"),
])
def test_bad_requests_change_nothing(node, kw, code, needle):
    status, out = node.call("ADD", **kw)
    assert (status, out["code"]) == (1, code) and needle in out["msg"]
    assert node.held() == {}


# ---------------------------------------------------------------- DEL


def test_del_releases_only_the_attachment_and_is_idempotent(node):
    node.call("ADD", cid="c1")
    node.call("ADD", cid="c1", ifname="net1")
    assert node.call("DEL", cid="c1") == (0, None)
    assert node.call("DEL", cid="c1") == (0, None)
    assert list(node.held().values()) == ["c1\r\nnet1"]


def test_del_works_without_subnet_env_and_without_a_store(node):
    node.call("ADD")
    node.subnet_file.unlink()
    assert node.call("DEL") == (0, None) and node.held() == {}
    assert node.call("DEL", ipam={"dataDir": str(node.data_dir / "never")}) == (0, None)
    assert not (node.data_dir / "never").exists()


# ---------------------------------------------------------------- CHECK


def test_check_passes_for_a_held_address_and_matching_prev_result(node):
    _, added = node.call("ADD")
    assert node.call("CHECK") == (0, None)
    assert node.call("CHECK", prevResult=added) == (0, None)


def test_check_fails_without_allocation(node):
    status, out = node.call("CHECK")
    assert (status, out["code"]) == (1, 104) and "c1" in out["msg"]


def test_check_fails_when_prev_result_names_another_address(node):
    node.call("ADD")
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.77/24", "gateway": "10.244.1.1"}]}
    status, out = node.call("CHECK", prevResult=prev)
    assert (status, out["code"]) == (1, 104) and "10.244.1.77" in out["msg"]


def test_check_fails_when_the_node_subnet_moved(node):
    node.call("ADD")
    node.subnet_file.write_text(SUBNET_ENV.replace("10.244.1.1/24", "10.244.2.1/24"))
    status, out = node.call("CHECK")
    assert (status, out["code"]) == (1, 104) and "outside" in out["msg"]


# ---------------------------------------------------------------- GC


def test_gc_keeps_valid_attachments_and_skips_bookkeeping_files(node):
    for cid in ("keep", "gone1", "gone2"):
        node.call("ADD", cid=cid)
    d = node.data_dir / "cbr0"
    (d / ".10.244.1.99.x1").write_text("stale temp")
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    assert node.call("GC", **{"cni.dev/valid-attachments": valid}) == (0, None)
    assert list(node.held().values()) == ["keep\r\neth0"]
    assert sorted(os.listdir(d)) == ["10.244.1.2", "boot_id", "last_reserved_ip.0", "lock", "owners"]
    assert os.listdir(d / "owners" / "cbr0") == ["10.244.1.2"]  # GC freed the others' markers too


def test_gc_accepts_the_older_key_and_an_empty_list(node):
    node.call("ADD", cid="a")
    node.call("ADD", cid="b")
    node.call("GC", **{"cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]})
    assert list(node.held().values()) == ["b\r\neth0"]
    node.call("GC", **{"cni.dev/valid-attachments": []})
    assert node.held() == {}


def test_gc_without_the_attachment_list_is_refused(node):
    node.call("ADD")
    status, out = node.call("GC")
    assert (status, out["code"]) == (1, 7) and "cni.dev/valid-attachments" in out["msg"]
    assert len(node.held()) == 1


# ---------------------------------------------------------------- STATUS


def test_status(tmp_path, node):
    assert node.call("STATUS") == (0, None)
    node.subnet_file.unlink()
    status, out = node.call("STATUS")
    assert (status, out["code"]) == (1, 50) and str(node.subnet_file) in out["msg"]
    node.subnet_file.write_text("FLANNEL_NETWORK=banana\n")
    assert node.call("STATUS")[1]["code"] == 50
    assert node.call("STATUS", ipam={"ranges": [[{"subnet": "10.9.0.0/24"}]]}) == (0, None)
    status, out = node.call("STATUS", ipam={"ranges": [[{"subnet": "10.9.0.0/24", "rangeEnd": "10.9.0.255"}]]})
    assert out["code"] == 7 and "rangeEnd" in out["msg"]


# ---------------------------------------------------------------- config errors and threads


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.pop("ipam"), "'ipam'"),
    (lambda c: c.update(name="no/slash"), "'name'"),
    (lambda c: c["ipam"].update(dataDir=5), "'ipam.dataDir'"),
    (lambda c: c["ipam"].update(routes=[{"gw": "10.0.0.1"}]), "'ipam.routes.0.dst'"),
])
def test_config_errors_are_code_7_naming_the_field(node, mutate, needle):
    conf = node.config()
    mutate(conf)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
    status, out = run(HANDLERS, env, json.dumps(conf).encode())
    err = json.loads(out)
    assert (status, err["code"]) == (1, 7) and needle in err["msg"]
    assert node.held() == {}


def test_handlers_are_thread_safe(node):
    def worker(n):
        return [node.call("ADD", cid=f"t{n}-{i}") for i in range(15)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = [o for batch in pool.map(worker, range(8)) for o in batch]
    assert [status for status, _ in outcomes] == [0] * 120
    assert len({out["ips"][0]["address"] for _, out in outcomes}) == 120 == len(node.held())
