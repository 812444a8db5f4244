"""The files an operator installs: the Kubernetes manifest, the systemd unit, net-conf.json.

Each is checked for what the README promises, and every daemon flag they pass is run
through flanneletted's own settings parser, so a renamed flag breaks this test and not
a node.
"""
from __future__ import annotations

import json
import pathlib
import re
import shlex

import pytest
import yaml

from conf.flannel import load_network_config
from daemon.settings import parse_settings

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "conf" / "shipped"
CAPS = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}
HOST_PATHS = {"/run/flannel", "/run/flannelette", "/etc/cni/net.d", "/opt/cni/bin",
              "/var/lib/cni", "/run/netns"}


def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi|M)", quantity)
    assert m, f"unexpected memory quantity {quantity!r}"
    return int(m.group(1)) * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20}[m.group(2)]


# ---------------------------------------------------------------- the manifest


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((SHIPPED / "kube-flannelette.yml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind is expected"
    return by_kind


@pytest.fixture(scope="module")
def pod_spec(manifest) -> dict:
    return manifest["DaemonSet"]["spec"]["template"]["spec"]


def daemon_container(pod_spec) -> dict:
    (c,) = [c for c in pod_spec["containers"] if c["name"] == "kube-flannelette"]
    return c


def test_manifest_has_every_object_in_one_namespace(manifest):
    assert set(manifest) == {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet"}
    ns = manifest["Namespace"]["metadata"]["name"]
    for kind in ("ServiceAccount", "ConfigMap", "Secret", "DaemonSet"):
        assert manifest[kind]["metadata"]["namespace"] == ns, kind


def test_daemonset_runs_on_every_node_in_the_host_network(manifest, pod_spec):
    assert pod_spec["hostNetwork"] is True
    assert pod_spec["priorityClassName"] == "system-node-critical"
    assert pod_spec["serviceAccountName"] == manifest["ServiceAccount"]["metadata"]["name"]
    assert {"operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    labels = manifest["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert manifest["DaemonSet"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_container_uses_the_project_image(pod_spec):
    from importlib.metadata import version
    images = {c["image"] for c in pod_spec["initContainers"] + pod_spec["containers"]}
    assert images == {f"ghcr.io/flannelette/flannelette:v{version('flannelette')}"}


def test_daemon_container_capabilities_and_limits(pod_spec):
    c = daemon_container(pod_spec)
    sec = c["securityContext"]
    assert sec.get("privileged") is not True
    assert set(sec["capabilities"]["add"]) == CAPS
    limit = mebibytes(c["resources"]["limits"]["memory"])
    request = mebibytes(c["resources"]["requests"]["memory"])
    assert 50 <= limit <= 80 and request <= limit  # flannel's own DaemonSet limits 50Mi
    assert c["resources"]["requests"]["cpu"]


def test_host_paths_are_mounted_where_the_daemon_and_plugin_expect_them(pod_spec):
    host = {v["name"]: v["hostPath"]["path"] for v in pod_spec["volumes"] if "hostPath" in v}
    assert HOST_PATHS <= set(host.values())
    mounts = {m["mountPath"].rstrip("/"): m for m in daemon_container(pod_spec)["volumeMounts"]}
    for path in HOST_PATHS:
        assert path in mounts, f"daemon does not mount {path}"
        assert host[mounts[path]["name"]] == path, f"{path} is mounted from another host path"
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"


def test_init_container_installs_binaries_and_conflist_on_the_host(pod_spec):
    (init,) = [c for c in pod_spec["initContainers"] if c["name"] == "install-cni"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod_spec["volumes"] if "hostPath" in v}
    mounted = {host[m["name"]]: m["mountPath"] for m in init["volumeMounts"] if m["name"] in host}
    # install-cni lays out <root>/opt/flannelette and <root>/opt/cni/bin like packaging/install.py.
    assert mounted == {"/opt": "/host/opt", "/etc/cni/net.d": "/host/etc/cni/net.d"}
    assert "--root=/host" in init["args"]
    assert "--conflist=/etc/kube-flannelette/cni-conf.json" in init["args"]


def test_daemon_args_and_config_map_are_accepted_by_flanneletted(manifest, pod_spec):
    c = daemon_container(pod_spec)
    env = {k: v for k, v in manifest["ConfigMap"]["data"].items() if k.startswith("FLANNELD_")}
    argv = [a.replace("$(POD_IP)", "192.0.2.10") for a in c["args"]]
    settings = parse_settings(argv, env)
    assert settings.subnet_file == "/run/flannel/subnet.env"
    assert settings.cni_socket == "/run/flannelette/cni.sock"
    assert [str(e) for e in settings.etcd_endpoints] == [env["FLANNELD_ETCD_ENDPOINTS"]]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == settings.healthz_port


def test_config_map_net_conf_is_the_shipped_one_and_valid(manifest):
    data = manifest["ConfigMap"]["data"]
    assert json.loads(data["net-conf.json"]) == json.loads((SHIPPED / "net-conf.json").read_text())
    conf = load_network_config(data["net-conf.json"])
    assert str(conf.network) == "10.244.0.0/16" and conf.backend.type == "vxlan"


def test_config_map_conflist_is_the_shipped_conflist(manifest):
    conflist = json.loads(manifest["ConfigMap"]["data"]["cni-conf.json"])
    assert conflist == json.loads((SHIPPED / "10-flannelette.conflist").read_text())
    assert conflist["plugins"][0]["type"] == "flannelette"


def test_etcd_credentials_come_from_the_secret(manifest, pod_spec):
    secret = manifest["Secret"]["metadata"]["name"]
    env = {e["name"]: e for e in daemon_container(pod_spec)["env"]}
    for var in ("FLANNELD_ETCD_USERNAME", "FLANNELD_ETCD_PASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == secret
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in daemon_container(pod_spec)["volumeMounts"]}
    assert vols[mounts["/etc/kube-flannelette/etcd"]]["secret"]["secretName"] == secret


# ---------------------------------------------------------------- the systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=Value, repeated keys, `\\` continuation, # comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit((SHIPPED / "flanneletted.service").read_text())


def test_unit_starts_after_the_network_and_always_restarts(unit):
    assert "network-online.target" in unit["Unit"]["After"][0].split()
    assert "network-online.target" in unit["Unit"]["Wants"][0].split()
    assert unit["Service"]["Restart"] == ["always"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_keeps_only_the_capabilities_it_needs(unit):
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert {c.removeprefix("CAP_") for c in unit["Service"][key][0].split()} == CAPS


def test_unit_exec_start_is_accepted_by_flanneletted(unit):
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/flanneletted")
    env = dict(e.split("=", 1) for e in unit["Service"]["Environment"])
    settings = parse_settings(argv[1:], env)
    assert settings.subnet_file == "/run/flannel/subnet.env"
    assert settings.etcd_prefix == "/coreos.com/network"
    assert settings.ip_masq is True and settings.healthz_port > 0


def test_parse_unit_reads_continuations_and_repeats():
    parsed = parse_unit("[S]\n# c\nA=1\nA=2\nB=x \\\n  y\n")
    assert parsed == {"S": {"A": ["1", "2"], "B": ["x    y"]}}
