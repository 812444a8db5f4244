"""The `cni` fixture: a test "node" netns holding cni0, pods in other netns, our plugin run like a runtime.

Every plugin test goes through `cni`, so the way the plugin is run (the mode) is
decided here only. Modes:
- "inproc": CNI_PATH holds the installed PyInstaller artefact (`flannelette`,
  `flannelette-ipam`, tests/support/install.py) next to the reference plugins, with
  `daemonSocket: ""` so the handlers run in the plugin process.
- "fastpath": the same artefact with `daemonSocket` pointing at a warm
  `python -m daemon.fastpath.server` running inside the node netns.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from typing import Optional

import pytest

from tests.support.cni import Outcome, invoke, tree_snapshot
from tests.support.install import FastPathServer, installed_bin_dir
from tests.support.netns import NetNS

MODES = ["inproc", "fastpath"]
NETWORK = "flt-net"


class CniNode:
    """One test node: a netns, a subnet.env, data dirs, a CNI_PATH, and helpers to call plugins."""

    def __init__(self, mode: str, root: str):
        self.mode = mode
        self.root = root
        self.bin_dir = os.path.join(root, "bin")
        self.subnet_file = os.path.join(root, "run", "subnet.env")
        self.data_dir = os.path.join(root, "plugin-data")
        self.ipam_dir = os.path.join(root, "ipam-data")
        self.conf_overrides: dict = {}
        self.server: Optional[FastPathServer] = None  # the fast-path server in "fastpath" mode
        self.node = NetNS()
        self._pods: list[NetNS] = []

    # ------------------------------------------------------------ set-up

    def write_subnet_env(self, subnet: str = "10.244.1.1/24", network: str = "10.244.0.0/16",
                         mtu: int = 1450, ipv6_subnet: str = "", ipv6_network: str = "") -> None:
        lines = [f"FLANNEL_NETWORK={network}", f"FLANNEL_SUBNET={subnet}"]
        if ipv6_subnet:
            lines += [f"FLANNEL_IPV6_NETWORK={ipv6_network}", f"FLANNEL_IPV6_SUBNET={ipv6_subnet}"]
        lines += [f"FLANNEL_MTU={mtu}", "FLANNEL_IPMASQ=true"]
        os.makedirs(os.path.dirname(self.subnet_file), exist_ok=True)
        with open(self.subnet_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def conf(self, version: str = "1.0.0", **extra) -> dict:
        """The `flannelette` entry of a conflist, as a runtime passes it on stdin."""
        conf = {"cniVersion": version, "name": NETWORK, "type": "flannelette",
                "subnetFile": self.subnet_file, "dataDir": self.data_dir,
                "ipam": {"type": "flannelette-ipam", "dataDir": self.ipam_dir}}
        conf.update(self.conf_overrides)
        conf.update(extra)
        return conf

    def pod(self) -> NetNS:
        ns = NetNS()
        self._pods.append(ns)
        return ns

    # ------------------------------------------------------------ running plugins

    def exe(self, plugin: str = "flannelette") -> str:
        return os.path.join(self.bin_dir, plugin)

    def run(self, command: str, config: dict | bytes | None, *, cid: str = "", pod: Optional[NetNS] = None,
            netns: Optional[str] = None, ifname: str = "eth0", plugin: str = "flannelette",
            **kw) -> Outcome:
        """Invoke a plugin from CNI_PATH inside the node netns, as a runtime on that node would."""
        if netns is None:
            netns = pod.path if pod is not None else ""
        return invoke(self.exe(plugin), command, config, container_id=cid, netns=netns,
                      ifname=ifname if command not in ("STATUS", "GC", "VERSION") else "",
                      cni_path=self.bin_dir, prefix=("ip", "netns", "exec", self.node.name), **kw)

    def add(self, pod: NetNS, cid: str, ifname: str = "eth0", version: str = "1.0.0", **extra) -> dict:
        out = self.run("ADD", self.conf(version, **extra), cid=cid, pod=pod, ifname=ifname)
        assert out.status == 0, f"ADD failed: {out.result} {out.stderr}"
        return out.result

    def delete(self, pod: Optional[NetNS], cid: str, ifname: str = "eth0", version: str = "1.0.0",
               **extra) -> Outcome:
        return self.run("DEL", self.conf(version, **extra), cid=cid, pod=pod, ifname=ifname)

    # ------------------------------------------------------------ observing

    def node_links(self) -> dict[str, dict]:
        out = json.loads(self.node.out("ip", "-d", "-j", "link", "show"))
        return {link["ifname"]: link for link in out}

    def node_veths(self) -> set[str]:
        return {name for name, link in self.node_links().items()
                if link.get("linkinfo", {}).get("info_kind") == "veth"}

    def pod_addresses(self, pod: NetNS, ifname: str = "eth0") -> set:
        out = json.loads(pod.out("ip", "-j", "addr", "show", "dev", ifname))
        return {ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
                for a in out[0]["addr_info"] if a.get("scope") == "global"}

    def allocations(self) -> dict[str, str]:
        """ip -> "<container id>\\n<ifname>" of every address the built-in IPAM holds."""
        directory = os.path.join(self.ipam_dir, NETWORK)
        if not os.path.isdir(directory):
            return {}
        out = {}
        for name in os.listdir(directory):
            try:
                ipaddress.ip_address(name)
            except ValueError:
                continue
            with open(os.path.join(directory, name)) as f:
                out[name] = f.read()
        return out

    def state_files(self) -> list[str]:
        """The plugin's per-attachment files (and their temporaries), not its lock or boot marker."""
        directory = os.path.join(self.data_dir, NETWORK)
        names = os.listdir(directory) if os.path.isdir(directory) else []
        return sorted(n for n in names if n not in ("lock", "attachments.boot_id"))

    def snapshot(self) -> tuple:
        """Links of the node and files of the data dirs, for "nothing changed" asserts."""
        return (sorted(self.node_links()), tree_snapshot(self.data_dir) if os.path.isdir(self.data_dir) else {},
                tree_snapshot(self.ipam_dir) if os.path.isdir(self.ipam_dir) else {})

    def close(self) -> None:
        for ns in self._pods:
            ns.close()
        self.node.close()


def _prepare_mode(node: CniNode) -> Optional[FastPathServer]:
    """Fill CNI_PATH and the conf overrides for the mode under test; the server to stop, if any."""
    # FLT_INSTALL_FORM=script: stubs running this checkout, for quick iteration without a rebuild
    node.bin_dir = installed_bin_dir(os.path.join(node.root, "install"),
                                     form=os.environ.get("FLT_INSTALL_FORM", "frozen"))
    if node.mode == "inproc":
        node.conf_overrides = {"daemonSocket": ""}
        return None
    if node.mode == "fastpath":
        socket_path = os.path.join(node.root, "run", "flannelette", "cni.sock")
        node.conf_overrides = {"daemonSocket": socket_path}
        node.server = FastPathServer(socket_path, node.node.name)
        return node.server
    raise ValueError(f"unknown plugin mode {node.mode!r}")


@pytest.fixture(params=MODES)
def cni(request):
    """A CniNode with subnet.env 10.244.1.1/24 in 10.244.0.0/16, MTU 1450, for each mode."""
    root = tempfile.mkdtemp(prefix="flt-plugin-")
    node = CniNode(request.param, root)
    try:
        _prepare_mode(node)
        node.write_subnet_env()
        yield node
    finally:
        if node.server is not None:
            node.server.stop()
        node.close()
        shutil.rmtree(root, ignore_errors=True)
