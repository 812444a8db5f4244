"""Debian's podman (4.3, CNI backend) on an e2e node, with nothing of the machine's own podman state.

Each node gets a holder process: it enters the node's netns, unshares a private mount
namespace and there mounts
  - a tmpfs on /var/lib (podman's and libcni's default state paths, e.g. the blob-info
    cache and /var/lib/cni/results, land in throwaway or test-owned dirs),
  - the test's own dirs on /var/lib/cni (libcni's result cache) and /run/netns (the
    container netns files podman makes),
  - a cgroup2 hierarchy on /sys/fs/cgroup: crun refuses a hybrid v1/v2 layout even
    with --cgroups=disabled,
then sleeps. Every podman command runs in that netns and mount namespace (nsenter),
with --root/--runroot/--tmpdir in the test's dir, CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF pointing at files written here (network_backend="cni",
cni_plugin_dirs = the installed CNI bin dir, network_config_dir private,
cgroup_manager="cgroupfs", events_logger="file", vfs storage). Containers run with
--cgroups=disabled and explicit nofile/nproc ulimits (the sandbox refuses podman's
defaults of 1048576). The image is imported from a tarball of Debian's static busybox:
nothing is pulled.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Optional

from tests.e2e.node import Node

BUSYBOX = "/bin/busybox"  # Debian's busybox-static
IMAGE = "localhost/flt-busybox:latest"
APPLETS = ("sh", "sleep", "ping", "ip", "cat", "ls", "nc", "hostname", "httpd")
RUN_FLAGS = ("--cgroups=disabled", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "--cap-add", "NET_RAW")

CONTAINERS_CONF = """\
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{net_dir}"
default_network = "{default_network}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp"
runtime = "crun"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
runroot = "{root}/runroot"
graphroot = "{root}/root"
"""

HOLDER = """\
set -e
mount -t tmpfs -o mode=755 flt-varlib /var/lib
mkdir -p /var/lib/cni
mount --bind "$1/cni" /var/lib/cni
mount --bind "$1/netns" /run/netns
mount -t cgroup2 flt-cgroup2 /sys/fs/cgroup
echo ready > "$1/ready"
exec sleep 3600
"""


def podman_missing() -> Optional[str]:
    """Why podman cannot run here, or None."""
    for tool in ("podman", "crun", "conmon", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (packaging/dev-setup.sh installs podman)"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} is missing (Debian's busybox-static)"
    return None


def flannelette_conflist(node: Node, name: str, portmap: bool = True) -> dict:
    """What a user writes for podman: flannelette (+ portmap) on this node's subnet.env."""
    entry = {"type": "flannelette", "subnetFile": node.subnet_file, "dataDir": node.plugin_data,
             "daemonSocket": node.cni_socket,
             "ipam": {"type": "flannelette-ipam", "subnetFile": node.subnet_file, "dataDir": node.ipam_data}}
    plugins = [entry]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


class Podman:
    """podman confined to one node's netns and a private mount namespace."""

    def __init__(self, node: Node, bin_dir: str, networks: dict[str, dict]):
        self.node = node
        self.root = tempfile.mkdtemp(prefix="flt-pm-")  # podman refuses a runroot over 50 characters
        self.cni_cache = os.path.join(self.root, "cni")
        self.netns_dir = os.path.join(self.root, "netns")
        self.net_dir = os.path.join(self.root, "net.d")
        for d in (self.cni_cache, self.netns_dir, self.net_dir, os.path.join(self.root, "tmp")):
            os.makedirs(d)
        for name, conflist in networks.items():
            with open(os.path.join(self.net_dir, f"{name}.conflist"), "w") as f:
                json.dump(conflist, f)
        settings = dict(root=self.root, bin_dir=bin_dir, net_dir=self.net_dir,
                        default_network=next(iter(networks)))
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.root,
                    "CONTAINERS_CONF": os.path.join(self.root, "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": os.path.join(self.root, "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": os.path.join(self.root, "registries.conf")}
        for key, text in (("CONTAINERS_CONF", CONTAINERS_CONF), ("CONTAINERS_STORAGE_CONF", STORAGE_CONF),
                          ("CONTAINERS_REGISTRIES_CONF", "unqualified-search-registries = []\n")):
            with open(self.env[key], "w") as f:
                f.write(text.format(**settings))
        self.holder: Optional[subprocess.Popen] = None

    def start(self) -> "Podman":
        self.holder = subprocess.Popen(
            ["nsenter", f"--net={self.node.ns.path}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", HOLDER, "holder", self.root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(self.root, "ready")):
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman holder failed: {self.holder.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        self._import_image()
        return self

    def _import_image(self) -> None:
        rootfs = os.path.join(self.root, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
        for applet in APPLETS:
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
        tarball = os.path.join(self.root, "busybox.tar")
        subprocess.run(["tar", "-C", rootfs, "-cf", tarball, "."], check=True)
        self("import", "--change", "CMD=/bin/sh", tarball, IMAGE)

    def __call__(self, *args: str, check: bool = True, timeout: float = 90) -> str:
        assert self.holder is not None
        argv = ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "podman", "--root",
                os.path.join(self.root, "root"), "--runroot", os.path.join(self.root, "runroot"),
                "--tmpdir", os.path.join(self.root, "tmp"), "--cgroup-manager=cgroupfs",
                "--events-backend=file", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stdout.decode()[-1000:]} {proc.stderr.decode()[-2000:]}")
        return proc.stdout.decode()

    def run(self, name: str, *flags: str, command: tuple[str, ...] = ("sleep", "600")) -> None:
        self("run", "-d", "--name", name, *RUN_FLAGS, *flags, IMAGE, *command)

    def exec(self, name: str, *cmd: str, check: bool = True) -> str:
        return self("exec", name, *cmd, check=check)

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name))[0]

    def cache_entries(self) -> list[str]:
        """libcni's cached results (/var/lib/cni/results inside the private mount namespace)."""
        results = os.path.join(self.cni_cache, "results")
        return sorted(os.listdir(results)) if os.path.isdir(results) else []

    def close(self) -> None:
        if self.holder is None:
            return
        try:
            if self.holder.poll() is None:
                self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        finally:
            if self.holder.poll() is None:
                self.holder.kill()
            self.holder.wait(10)
            self.holder = None
            shutil.rmtree(self.root, ignore_errors=True)
