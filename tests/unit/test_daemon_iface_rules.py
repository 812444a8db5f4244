"""--iface-regex and --iface-can-reach: parsing, flanneld's regex rules on fake interface
lists, and the order in which select_node tries the selectors (no root, no kernel)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from conf.daemon import split_patterns
from conf.flannel import load_network_config
from daemon.dataplane import node as dataplane
from daemon.dataplane.backend import DataplaneError
from daemon.dataplane.node import NodeInfo, match_iface_regex
from daemon.main import Daemon, FatalError
from daemon.settings import SettingsError, parse_settings

V4, V6 = socket.AF_INET, socket.AF_INET6
IFACES = [(1, "lo"), (2, "eth0"), (3, "eth1"), (4, "ens10")]
ADDRS = [  # (index, family, address, prefixlen) as discover_node reads them
    (1, V4, "127.0.0.1", 8), (1, V6, "::1", 128),
    (2, V4, "192.168.1.10", 24), (2, V6, "fe80::1", 64),
    (3, V4, "10.0.5.7", 24), (3, V4, "10.1.9.9", 24), (3, V6, "fd00:1::7", 64),
    (4, V4, "10.2.0.4", 24), (4, V6, "fd00:2::4", 64),
]


def match(regex: str, families=(V4,)):
    return match_iface_regex(re.compile(regex), IFACES, ADDRS, families)


# ---------------------------------------------------------------- settings


def test_regex_flags_repeat_split_at_top_level_commas_only():
    s = parse_settings(["--iface-regex", r"^10\.0\.[0-9]{1,3}$,eth[01]", "--iface-regex", "ens.*",
                        "--iface-can-reach", "10.0.0.1"], {})
    assert s.iface_regex == [r"^10\.0\.[0-9]{1,3}$", "eth[01]", "ens.*"]
    assert str(s.iface_can_reach) == "10.0.0.1" and s.iface == []


def test_split_patterns_keeps_classes_groups_and_escaped_commas():
    assert split_patterns(r"a\,b,[,;],(x,y),z{2,}") == [r"a\,b", "[,;]", "(x,y)", "z{2,}"]
    assert split_patterns("") == [""]


def test_environment_sets_both_and_flags_win():
    env = {"FLANNELD_IFACE_REGEX": "eth.*,^10\\.", "FLANNELD_IFACE_CAN_REACH": "fd00::1"}
    s = parse_settings([], env)
    assert s.iface_regex == ["eth.*", "^10\\."] and str(s.iface_can_reach) == "fd00::1"
    s = parse_settings(["--iface-regex", "ens", "--iface-can-reach", "192.0.2.1"], env)
    assert s.iface_regex == ["ens"] and str(s.iface_can_reach) == "192.0.2.1"


@pytest.mark.parametrize("argv,env,start", [
    (["--iface-regex", "eth(0"], {}, "--iface-regex: 'eth(0' is not a valid regular expression"),
    (["--iface-regex", "ok,[a-"], {}, "--iface-regex: '[a-' is not a valid regular expression"),
    ([], {"FLANNELD_IFACE_REGEX": "*x"}, "FLANNELD_IFACE_REGEX: '*x' is not a valid"),
    (["--iface-can-reach", "gateway"], {}, "--iface-can-reach: 'gateway' is not an IPv4 or IPv6"),
    ([], {"FLANNELD_IFACE_CAN_REACH": "10.0.0.256"}, "FLANNELD_IFACE_CAN_REACH: '10.0.0.256'"),
])
def test_bad_values_are_refused_naming_the_flag_first(argv, env, start):
    with pytest.raises(SettingsError, match="^" + re.escape(start) + "[^\n]*$"):
        parse_settings(argv, env)


def test_the_executable_refuses_a_bad_regex_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "daemon.main", "--iface-regex", "eth[0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "--iface-regex: 'eth[0'" in proc.stderr


# ---------------------------------------------------------------- flanneld's regex rules


def test_an_address_match_wins_and_reports_the_matched_address():
    assert match(r"^10\.1\.") == (3, {V4: "10.1.9.9"})  # eth1's second address
    assert match(r"^10\.") == (3, {V4: "10.0.5.7"})  # eth1 comes before ens10


def test_the_pattern_is_searched_not_anchored_like_go_matchstring():
    assert match(r"2\.0") == (4, {V4: "10.2.0.4"})
    assert match(r"\.10$") == (2, {V4: "192.168.1.10"})


def test_names_are_tried_only_when_no_address_matches():
    assert match("eth1") == (3, {})
    assert match("^e") == (2, {})  # first interface whose name matches
    # addresses of every interface first, lo included (flanneld lists all interfaces too)
    assert match("1") == (1, {V4: "127.0.0.1"})


def test_dual_stack_needs_a_match_in_each_family_on_the_same_interface():
    assert match(r"^(10\.2\.|fd00:2:)", (V4, V6)) == (4, {V4: "10.2.0.4", V6: "fd00:2::4"})
    assert match(r"^(10\.0\.|fd00:)", (V4, V6)) == (3, {V4: "10.0.5.7", V6: "fd00:1::7"})
    # eth0's only IPv6 address is link-local: never advertised, never matched
    assert match(r"^(192\.168\.|fe80)", (V4, V6)) is None


def test_no_match_is_none():
    assert match("^wlan") is None


# ---------------------------------------------------------------- selector order (select_node)


def run_select(monkeypatch, argv, found: dict, netconf='{"Network": "10.244.0.0/16"}'):
    """select_node with a fake discover_node that knows the selectors in `found`."""
    calls = []

    def fake(iface=None, public_ip=None, public_ipv6=None, *, iface_regex=None, can_reach=None,
             families=(V4,)):
        key = iface or iface_regex or can_reach or "default"
        calls.append((key, families))
        if key not in found:
            raise DataplaneError(f"nothing for {key}")
        return NodeInfo(iface=found[key], iface_index=7, public_ip=public_ip or "10.0.0.9",
                        public_ipv6=public_ipv6)

    monkeypatch.setattr(dataplane, "discover_node", fake)
    daemon = Daemon(parse_settings(argv, {}))
    daemon.config = load_network_config(netconf)
    try:
        return daemon.select_node().iface, calls
    except FatalError as e:
        return f"fatal: {e}", calls


def test_iface_wins_over_regex_and_can_reach(monkeypatch):
    got, calls = run_select(monkeypatch, ["--iface", "eth1", "--iface-regex", "ens",
                                          "--iface-can-reach", "10.9.9.9"],
                            {"eth1": "eth1", "ens": "ens10", "10.9.9.9": "eth0"})
    assert got == "eth1" and [c[0] for c in calls] == ["eth1"]


def test_regexes_in_order_then_can_reach_when_nothing_earlier_exists(monkeypatch):
    argv = ["--iface", "eth9", "--iface-regex", "wlan,ens", "--iface-regex", "eth",
            "--iface-can-reach", "10.9.9.9"]
    got, calls = run_select(monkeypatch, argv, {"ens": "ens10", "eth": "eth0", "10.9.9.9": "x"})
    assert got == "ens10" and [c[0] for c in calls] == ["eth9", "wlan", "ens"]
    got, calls = run_select(monkeypatch, argv, {"10.9.9.9": "eth2"})
    assert got == "eth2" and [c[0] for c in calls] == ["eth9", "wlan", "ens", "eth", "10.9.9.9"]


def test_nothing_found_is_fatal_listing_every_try_and_never_the_default_route(monkeypatch):
    got, calls = run_select(monkeypatch, ["--iface-regex", "a,b", "--iface-can-reach", "fd00::1"],
                            {"default": "eth0"})
    assert got == "fatal: no interface found: nothing for a; nothing for b; nothing for fd00::1"
    assert "default" not in [c[0] for c in calls]


def test_no_selector_keeps_the_default_route_and_families_follow_the_network(monkeypatch):
    got, calls = run_select(monkeypatch, [], {"default": "eth0"})
    assert got == "eth0" and calls == [("default", (V4,))]
    dual = '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd10::/56"}'
    got, calls = run_select(monkeypatch, ["--iface-regex", "e", "--public-ipv6", "fd00::9"],
                            {"e": "eth0"}, dual)
    assert got == "eth0" and calls == [("e", (V4, V6))]
