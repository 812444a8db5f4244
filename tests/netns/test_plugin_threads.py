"""The handlers called concurrently on pool threads, as the warm daemon calls them.

Runs inside the node netns (a child process), with the pod netns passed as an open fd
like the fast path does; checks that every worker thread is back in the node netns
after every call and that no call ever touched another thread's namespace.
"""
from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

WORKER = r"""
import json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
from conf.dispatch import run
from cni_plugin import HANDLERS

conf, pods, bin_dir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
home = os.stat("/proc/self/ns/net").st_ino
strays = []

def call(command, i):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c-thread-{i}", "CNI_NETNS": pods[i],
           "CNI_IFNAME": "eth0", "CNI_PATH": bin_dir}
    fd = os.open(pods[i], os.O_RDONLY)
    try:
        status, out = run(HANDLERS, env, json.dumps(conf).encode(), netns_fd=fd)
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != home:
        strays.append(threading.current_thread().name)
    return status, json.loads(out) if out else None

with ThreadPoolExecutor(8) as pool:
    adds = list(pool.map(lambda i: call("ADD", i), range(len(pods))))
    dels = list(pool.map(lambda i: call("DEL", i), range(len(pods))))
print(json.dumps({"adds": adds, "dels": dels, "strays": strays,
                  "main_home": os.stat("/proc/thread-self/ns/net").st_ino == home}))
"""


def test_concurrent_add_and_del_on_pool_threads(cni):
    pods = [cni.pod() for _ in range(16)]
    proc = cni.node.run(sys.executable, "-c", WORKER, json.dumps(cni.conf()),
                        json.dumps([p.path for p in pods]), cni.bin_dir, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["strays"] == [] and report["main_home"]
    assert [status for status, _ in report["adds"]] == [0] * 16, report["adds"]
    addresses = {result["ips"][0]["address"] for _, result in report["adds"]}
    assert len(addresses) == 16
    for pod, (_, result) in zip(pods, report["adds"]):
        links = [line.split()[0] for line in pod.out("ip", "-br", "link").splitlines()]
        assert links == ["lo"]  # DEL ran: the pod end went with the host end
        assert result["interfaces"][2]["sandbox"] == pod.path
    assert [status for status, _ in report["dels"]] == [0] * 16
    assert cni.allocations() == {} and cni.state_files() == []
    assert cni.node_veths() == set()
