"""Hostile input fuzzed with hypothesis against the installed executables.

`flannelette` (in-process and fast path) and `flannelette-ipam` get mutated configs
(one field of a valid config given a value of the wrong type, out of range, a bad CIDR,
unicode, null), mutated CNI_* variables (one at a time: missing, path-like, huge,
malformed) and raw stdin (binary garbage, random JSON, truncations). Every answer must be
one CNI error JSON on stdout with a spec or plugin code (never 999), a non-zero exit, no
traceback on stderr, and nothing changed: not the files under the node's root (IPAM
reservations and last_reserved_ip hints, the plugin's state), not any link or address of
the node (cni0's MTU included), not the pods' netns.

Deterministic (derandomize) with a fixed budget for CI; FLT_SOAK=1 runs 20 times more.
Each test prints how many inputs it tried, and the budget is in the test id.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conf.cni import COMMANDS, CONTAINER_ID_RE, SUPPORTED_VERSIONS, valid_ifname
from tests.support.cni import BASE_PATH, parse_stdout

pytestmark = pytest.mark.timeout(900)

SOAK = os.environ.get("FLT_SOAK") == "1"
# Codes bad input may get: the spec's for bad version, field, env, decode, config, netns,
# and 103 (the ifname already exists in the pod, e.g. "lo").
EXPECTED_CODES = {1, 2, 4, 6, 7, 8, 103}
DELETE = object()  # a mutation that removes the field


def budget(n: int) -> int:
    return n * 20 if SOAK else n


# ---------------------------------------------------------------- observing "nothing changed"


def _files(root: str) -> dict[str, bytes]:
    """Every regular file under the node's root but the installed executables and logs."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in ("install", "bin"))]
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = b""
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.endswith(".log") or not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with open(path, "rb") as f:
                out[os.path.join(rel, name)] = f.read()
    return out


def _links(ns) -> list[tuple]:
    links = json.loads(ns.out("ip", "-d", "-j", "link", "show"))
    addrs = {a["ifname"]: a.get("addr_info", []) for a in json.loads(ns.out("ip", "-j", "addr", "show"))}
    return sorted((link["ifname"], link["mtu"], tuple(sorted(link.get("flags", []))), link.get("address"),
                   link.get("master"), link.get("linkinfo", {}).get("info_kind"),
                   tuple(sorted((a["local"], a["prefixlen"]) for a in addrs.get(link["ifname"], [])
                                if a.get("scope") == "global")))
                  for link in links)


def snapshot(cni, pods) -> tuple:
    return _files(cni.root), _links(cni.node), tuple(_links(p) for p in pods)


# ---------------------------------------------------------------- running and judging


def run_raw(cni, exe: str, env: dict[str, str], stdin: bytes):
    proc = subprocess.run(["ip", "netns", "exec", cni.node.name, cni.exe(exe)], input=stdin,
                          env={"PATH": BASE_PATH, **env}, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def assert_refused(cni, pods, before, exe, env, stdin, names=()):
    """One refusal: error JSON with an expected code naming one of `names`, nothing changed."""
    status, stdout, stderr = run_raw(cni, exe, env, stdin)
    err = parse_stdout(stdout)
    shown = f"env={ {k: v[:80] for k, v in env.items()} } stdin={stdin[:200]!r} -> {status} {stdout[:300]!r} {stderr[-300:]!r}"
    if status == 0 and env.get("CNI_COMMAND") == "ADD":  # accepted: undo it so later examples stay judgeable
        run_raw(cni, exe, {**env, "CNI_COMMAND": "DEL"}, stdin)
    assert status != 0 and err is not None, shown
    assert set(err) <= {"cniVersion", "code", "msg", "details"} and isinstance(err.get("msg"), str), shown
    assert err["code"] in EXPECTED_CODES, shown
    if names and err["code"] in (4, 7):
        assert any(n in err["msg"] for n in names), shown
    assert "Traceback" not in stderr and 'File "' not in stderr, shown
    after = snapshot(cni, pods)
    assert after == before, f"state changed: {describe_change(before, after)} by {shown}"


def describe_change(before: tuple, after: tuple) -> str:
    files = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
    parts = [f"files {files}"] if files else []
    for what, b, a in (("node links", before[1], after[1]), ("pod links", before[2], after[2])):
        if a != b:
            parts.append(f"{what} {b} -> {a}")
    return "; ".join(parts)


@pytest.fixture
def node(cni):
    """A node with one pod already attached (cni0, a reservation, hints, a state file),
    and an empty pod netns the fuzzed requests point at."""
    existing = cni.pod()
    cni.add(existing, "c-existing")
    target = cni.pod()
    return cni, [existing, target]


def env_for(cni, target, command="ADD", **overrides) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c-fuzz", "CNI_NETNS": target.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": cni.bin_dir}
    for key, value in overrides.items():
        if value is DELETE:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# ---------------------------------------------------------------- strategies

junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
not_str = junk.filter(lambda v: not isinstance(v, str))
not_dict = junk.filter(lambda v: not isinstance(v, dict))
not_list = junk.filter(lambda v: not isinstance(v, list))
# pydantic's lax bool accepts 0/1 and yes/no/on/off/true/false/t/f/y/n
not_bool = junk.filter(lambda v: not isinstance(v, bool) and v not in (0, 1) and not (
    isinstance(v, str) and v.strip().lower() in ("0", "1", "yes", "no", "on", "off", "true", "false", "t", "f", "y", "n")))
bad_cidr = st.one_of(
    st.sampled_from(["10.244.1.0/33", "300.1.1.0/24", "10.244.1.5/24", "10.244.1.0/31", "::/200", "", "/",
                     "10.244.1.0/-1", "10.244.1.0/24/1", "10.244.1.0 /24", "fe80::%eth0/64", "1" * 300,
                     "10.244.1.0/24\n", "١٠.٢٤٤.١.٠/٢٤"]),
    st.text(max_size=20).filter(lambda s: "/" not in s), not_str)
bad_ifname = st.one_of(st.sampled_from(["a" * 16, "a/b", "", ".", "..", "a b", "eth0:1", "é" * 8, "a\tb"]),
                       st.text(max_size=20).filter(lambda s: not valid_ifname(s)), not_str)
bad_mtu = st.one_of(st.integers(max_value=-1), st.integers(min_value=65536, max_value=2 ** 80),
                    st.integers(min_value=1, max_value=67), st.floats().filter(lambda f: not f.is_integer()),
                    st.text(max_size=10).filter(lambda s: not s.strip().lstrip("+-").isdigit()),
                    st.lists(st.integers(), max_size=2), st.none(), st.just(True))


def _ranges(cidr):
    return [[{"subnet": cidr}]]


# (field path, values that must be refused); a path into "ipam" reaches the IPAM's config
PLUGIN_FIELDS = [
    (("cniVersion",), st.one_of(st.just(DELETE), junk.filter(lambda v: v not in SUPPORTED_VERSIONS))),
    (("name",), st.one_of(st.just(DELETE), not_str,
                          st.text(max_size=20).filter(lambda s: not CONTAINER_ID_RE.match(s)))),
    (("type",), st.one_of(st.just(DELETE), not_str)),
    (("bridge",), bad_ifname),
    (("mtu",), bad_mtu),
    (("hairpinMode",), not_bool),
    (("isDefaultGateway",), not_bool),
    (("daemonSocket",), not_str),
    (("ipam",), not_dict.filter(lambda v: v not in (None, [], 0, False, ""))),
    (("ipam", "type"), not_str),
    (("ipam", "dataDir"), not_str),
    (("ipam", "subnetFile"), not_str),
    (("ipam", "resolvConf"), not_str.filter(lambda v: v is not None)),
    (("ipam", "ranges"), st.one_of(not_list.filter(lambda v: v is not None), bad_cidr.map(_ranges),
                                   st.just([[]]), st.lists(not_list, min_size=1, max_size=2),
                                   st.builds(lambda v: [[{"subnet": "10.244.1.0/24", "rangeStart": v}]],
                                             bad_cidr.filter(lambda v: v is not None)))),  # None: unset
    (("ipam", "routes"), st.one_of(not_list.filter(lambda v: v is not None),
                                   bad_cidr.map(lambda c: [{"dst": c}]),
                                   st.builds(lambda g: [{"dst": "10.0.0.0/8", "gw": g}], bad_cidr))),
    (("runtimeConfig",), not_dict.filter(lambda v: v is not None)),
    (("args",), not_dict.filter(lambda v: v is not None)),
    (("dns",), st.one_of(not_dict.filter(lambda v: v is not None),
                         not_list.filter(lambda v: v is not None).map(lambda v: {"nameservers": v}))),
]
IPAM_FIELDS = [f for f in PLUGIN_FIELDS
               if f[0][0] in ("cniVersion", "name", "ipam")]


def mutate(conf: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(conf))
    target = out
    for key in path[:-1]:
        target = target.setdefault(key, {})
    if value is DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return out


def config_cases(fields):
    return st.sampled_from(fields).flatmap(lambda f: st.tuples(st.just(f[0]), f[1]))


path_like = st.sampled_from(["../../etc", "/", "..", ".", "a/b", "../x", "/etc/passwd", "-rf", "_x", "x y",
                             "x\n", "c-fuzz/../c-existing", "é", "a" * 5000, "c" * 100_000])
ENV_CASES = {
    "CNI_COMMAND": st.one_of(st.just(DELETE), st.just(""), st.sampled_from(["add", " ADD", "ADD\n", "DELETE", "A"]),
                             st.text(max_size=12).filter(lambda s: s not in COMMANDS and "\0" not in s)),
    "CNI_CONTAINERID": st.one_of(st.just(DELETE), st.just(""), path_like,
                                 st.text(max_size=30).filter(lambda s: "\0" not in s and not CONTAINER_ID_RE.match(s))),
    "CNI_NETNS": st.one_of(st.just(DELETE), st.just(""),
                           st.sampled_from(["/", "/dev/null", "/etc/passwd", "/nonexistent/ns", "relative/ns",
                                            "/proc/1/ns/mnt", "/proc/self/ns/uts", "/tmp", "/run/netns",
                                            "/" + "a" * 5000, "/run/netns/../../etc/passwd"])),
    "CNI_IFNAME": st.one_of(st.just(DELETE), bad_ifname.filter(lambda v: isinstance(v, str) and "\0" not in v),
                            st.just("lo")),
    "CNI_ARGS": st.lists(st.sampled_from(["a", "=b", "=", "K8S_POD_NAME", "IgnoreUnknown=1", "x=y", ";"]),
                         min_size=1, max_size=4).map(";".join).filter(
        lambda s: any(p and (not p.partition("=")[1] or not p.partition("=")[0]) for p in s.split(";"))),
}


def json_values():
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                        max_leaves=12)


def stdin_cases(valid: bytes):
    return st.one_of(
        st.binary(max_size=400),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=0, max_value=len(valid) - 1).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=8).map(lambda b: valid[:-1] + b),  # garbage after a valid start
        st.just(b"\xef\xbb\xbf" + valid),  # a UTF-8 byte-order mark
        st.just(valid.replace(b'"flt-net"', b'"flt-\xff"')),  # not UTF-8 inside a string
    )


def _settings(examples: int):
    return settings(max_examples=budget(examples), derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    # no shrinking: every example costs an executable run; the failing input is printed whole
                    phases=[Phase.explicit, Phase.generate])


# ---------------------------------------------------------------- the fuzz tests

FLANNELETTE_BUDGET = {"config": 40, "env": 30, "stdin": 20}
IPAM_BUDGET = {"config": 30, "env": 20, "stdin": 15}


def _fuzz(node, exe: str, family: str, examples: int, conf: dict, fields, env_cases=ENV_CASES) -> int:
    cni, pods = node
    target = pods[1]
    before = snapshot(cni, pods)
    valid = json.dumps(conf).encode()
    tried = []

    if family == "config":
        @_settings(examples)
        @given(case=config_cases(fields))
        def check(case):
            path, value = case
            tried.append(1)
            assert_refused(cni, pods, before, exe, env_for(cni, target),
                           json.dumps(mutate(conf, path, value)).encode(), names=(path[-1],))
    elif family == "env":
        @_settings(examples)
        @given(var=st.sampled_from(sorted(env_cases)), data=st.data())
        def check(var, data):
            value = data.draw(env_cases[var], label=var)
            tried.append(1)
            assert_refused(cni, pods, before, exe, env_for(cni, target, **{var: value}), valid, names=(var,))
    else:
        @_settings(examples)
        @given(stdin=stdin_cases(valid), command=st.sampled_from(["ADD", "DEL"]))
        def check(stdin, command):
            tried.append(1)
            assert_refused(cni, pods, before, exe, env_for(cni, target, command), stdin)

    check()
    print(f"\n{exe} {cni.mode} {family}: {len(tried)} hostile inputs tried, every one refused, nothing changed")
    return len(tried)


@pytest.mark.parametrize("family", [f"{f}-x{budget(n)}" for f, n in FLANNELETTE_BUDGET.items()])
def test_flannelette_refuses_hostile_input(node, family):
    cni, _ = node
    family = family.split("-")[0]
    assert _fuzz(node, "flannelette", family, FLANNELETTE_BUDGET[family], cni.conf(), PLUGIN_FIELDS) > 0


@pytest.mark.parametrize("cni", ["inproc"], indirect=True)
@pytest.mark.parametrize("family", [f"{f}-x{budget(n)}" for f, n in IPAM_BUDGET.items()])
def test_flannelette_ipam_refuses_hostile_input(node, family):
    cni, _ = node
    family = family.split("-")[0]
    conf = {"cniVersion": "1.0.0", "name": "flt-net", "type": "bridge",
            "ipam": {"type": "flannelette-ipam", "dataDir": cni.ipam_dir, "subnetFile": cni.subnet_file}}
    # An IPAM never enters the netns (host-local neither): only a missing CNI_NETNS is an error,
    # and an ifname the pod already has ("lo") is the main plugin's business.
    env_cases = {**ENV_CASES, "CNI_NETNS": st.sampled_from([DELETE, ""]),
                 "CNI_IFNAME": ENV_CASES["CNI_IFNAME"].filter(lambda v: v != "lo")}
    assert _fuzz(node, "flannelette-ipam", family, IPAM_BUDGET[family], conf, IPAM_FIELDS, env_cases) > 0


# ---------------------------------------------------------------- cni0's MTU


def test_cni0_keeps_its_mtu_when_the_last_pod_leaves(cni):
    """The bridge driver resets an MTU given at creation to 1500 when its last port leaves;
    one set after creation is the user's and stays (cni_plugin/attachment.py ensure_bridge)."""
    pod = cni.pod()
    cni.add(pod, "c-mtu")
    assert cni.node_links()["cni0"]["mtu"] == 1450
    out = cni.delete(pod, "c-mtu")
    assert out.status == 0 and not cni.node_veths(), out
    assert cni.node_links()["cni0"]["mtu"] == 1450
