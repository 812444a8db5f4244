"""flannelette in a real Kubernetes cluster (kind): the image, the manifest, pods across nodes.

Needs Docker, kind, kubectl and kind's node image; skipped with the reason when any is
missing (these build machines cannot fetch them). Where they exist:

    FLT_KIND_NODE_IMAGE=kindest/node:v1.31.0 \\
      .venv/bin/python -m pytest -q tests/e2e/kind -p no:cacheprovider

What it does: builds packaging/Dockerfile, creates a 3-node kind cluster with kindnet off
and pod subnet 10.244.0.0/16 (kind-config.yaml), loads the image, points flanneletted at
the cluster's own etcd over TLS (the control plane's etcd client certificate goes into
the flannelette-etcd Secret; a separate key prefix keeps it apart from Kubernetes' keys),
applies conf/shipped/kube-flannelette.yml, waits for the DaemonSet and the nodes, then
starts an HTTP server pod and a client pod on two different workers (both from our own
image, which has python3, so nothing else is pulled) and fetches from one to the other.
Unlike the netns tiers, kind itself changes the host's network (Docker's bridge).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
from importlib.metadata import version

import pytest
import yaml

pytestmark = pytest.mark.timeout(900)

REPO = pathlib.Path(__file__).resolve().parents[3]
KIND_CONFIG = pathlib.Path(__file__).with_name("kind-config.yaml")
MANIFEST = REPO / "conf" / "shipped" / "kube-flannelette.yml"
CLUSTER = "flt-e2e"
CONTEXT = f"kind-{CLUSTER}"
IMAGE = f"ghcr.io/flannelette/flannelette:v{version('flannelette')}"
NODE_IMAGE = os.environ.get("FLT_KIND_NODE_IMAGE", "kindest/node:v1.31.0")
ETCD_PKI = "/etc/kubernetes/pki"


def sh(*cmd: str, input: str | None = None, timeout: float = 600,
       check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          check=check)


def missing_prerequisite() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if sh("docker", "info", check=False, timeout=30).returncode != 0:
        return "the Docker daemon is not reachable"
    if sh("docker", "image", "inspect", NODE_IMAGE, check=False, timeout=30).returncode != 0:
        return (f"kind's node image {NODE_IMAGE} is not present "
                "(docker pull it, or set FLT_KIND_NODE_IMAGE)")
    return None


_reason = missing_prerequisite()
if _reason:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"kind e2e: {_reason}")]


def kubectl(*args: str, input: str | None = None, timeout: float = 300) -> str:
    return sh("kubectl", "--context", CONTEXT, *args, input=input, timeout=timeout).stdout


@pytest.fixture(scope="module")
def kind_cluster():
    sh("docker", "build", "-f", str(REPO / "packaging" / "Dockerfile"), "-t", IMAGE, str(REPO),
       timeout=1800)
    sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)
    try:
        sh("kind", "create", "cluster", "--name", CLUSTER, "--image", NODE_IMAGE,
           "--config", str(KIND_CONFIG), "--wait", "0s")
        sh("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        yield
    finally:
        sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)


def control_plane_etcd() -> tuple[str, dict[str, str]]:
    """The control plane's etcd endpoint and a client certificate for it."""
    node = f"{CLUSTER}-control-plane"
    ip = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            node).stdout.strip()
    files = {"ca.crt": "etcd/ca.crt", "tls.crt": "apiserver-etcd-client.crt",
             "tls.key": "apiserver-etcd-client.key"}
    certs = {key: sh("docker", "exec", node, "cat", f"{ETCD_PKI}/{path}").stdout
             for key, path in files.items()}
    return f"https://{ip}:2379", certs


def manifest_for_kind(endpoint: str, certs: dict[str, str]) -> str:
    """The shipped manifest with the etcd endpoint, TLS files and a private key prefix."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    mount = "/etc/kube-flannelette/etcd"
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            doc["data"].update(FLANNELD_ETCD_ENDPOINTS=endpoint,
                               FLANNELD_ETCD_PREFIX="/flannelette-e2e/network",
                               FLANNELD_ETCD_CAFILE=f"{mount}/ca.crt",
                               FLANNELD_ETCD_CERTFILE=f"{mount}/tls.crt",
                               FLANNELD_ETCD_KEYFILE=f"{mount}/tls.key")
        elif doc["kind"] == "Secret":
            doc["stringData"].update(certs)
    return yaml.safe_dump_all(docs)


def pod(name: str, node: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "flt-e2e"}},
            "spec": {"nodeName": node, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": IMAGE, "command": command}]}}


def test_pods_on_different_nodes_reach_each_other(kind_cluster):
    endpoint, certs = control_plane_etcd()
    kubectl("apply", "-f", "-", input=manifest_for_kind(endpoint, certs))
    kubectl("-n", "kube-flannelette", "rollout", "status", "ds/kube-flannelette-ds",
            "--timeout=300s", timeout=320)
    kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=300s", timeout=320)

    workers = [n for n in kubectl("get", "nodes", "-o", "name").split()
               if "control-plane" not in n]
    assert len(workers) == 2, workers
    a, b = (w.split("/", 1)[1] for w in workers)
    server = ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]
    manifests = [pod("flt-server-a", a, server), pod("flt-server-b", b, server)]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": manifests}))
    kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=flt-e2e", "--timeout=180s",
            timeout=200)
    ips = {name: kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")
           for name in ("flt-server-a", "flt-server-b")}
    assert all(ip.startswith("10.244.") for ip in ips.values()), ips
    assert ips["flt-server-a"].rsplit(".", 1)[0] != ips["flt-server-b"].rsplit(".", 1)[0], \
        "pods on different nodes must come from different node subnets"

    fetch = ("import sys, urllib.request; "
             "print(urllib.request.urlopen(f'http://{sys.argv[1]}:8080/', timeout=5).status)")
    for client, target in (("flt-server-a", "flt-server-b"), ("flt-server-b", "flt-server-a")):
        for attempt in range(10):  # the peer's route may still be on its way
            out = sh("kubectl", "--context", CONTEXT, "exec", client, "--", "python3", "-c",
                     fetch, ips[target], check=False, timeout=30)
            if out.returncode == 0:
                break
            time.sleep(1)
        assert out.stdout.strip() == "200", f"{client} -> {target}: {out.stdout} {out.stderr}"
