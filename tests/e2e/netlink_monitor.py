"""Record a node's rtnetlink events (pyroute2 as the independent decoder) while it restarts.

`NetlinkMonitor(ns)` runs this file inside the node's namespace; it subscribes to link,
address, route and neighbour (FDB included: AF_BRIDGE neighbours) notifications and prints
one JSON object per event. `events()` returns what was seen so far. A restart that keeps
the data plane must produce no event about the daemon's objects; see `touches_data_plane`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading

from tests.support.netns import NetNS

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_EVENT_ATTRS = {  # event -> the attributes worth keeping, by pyroute2's names
    "RTM_NEWLINK": ("IFLA_IFNAME",), "RTM_DELLINK": ("IFLA_IFNAME",),
    "RTM_NEWADDR": ("IFA_ADDRESS", "IFA_LABEL"), "RTM_DELADDR": ("IFA_ADDRESS", "IFA_LABEL"),
    "RTM_NEWROUTE": ("RTA_DST", "RTA_GATEWAY", "RTA_OIF"),
    "RTM_DELROUTE": ("RTA_DST", "RTA_GATEWAY", "RTA_OIF"),
    "RTM_NEWNEIGH": ("NDA_DST", "NDA_LLADDR"), "RTM_DELNEIGH": ("NDA_DST", "NDA_LLADDR"),
}


def _serve() -> None:
    from pyroute2 import IPRoute
    with IPRoute() as sock:
        sock.bind()
        print(json.dumps({"event": "ready"}), flush=True)
        while True:
            for msg in sock.get():
                event = msg.get("event")
                if event not in _EVENT_ATTRS:
                    continue
                record = {"event": event, "family": msg.get("family"),
                          "index": msg.get("index", msg.get("ifindex")),
                          "dst_len": msg.get("dst_len"), "state": msg.get("state")}
                record.update({name: msg.get_attr(name) for name in _EVENT_ATTRS[event]})
                print(json.dumps(record, default=str), flush=True)


class NetlinkMonitor:
    def __init__(self, ns: NetNS):
        self.proc = ns.popen(sys.executable, "-m", "tests.e2e.netlink_monitor", cwd=_REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if b"ready" not in first:
            self.proc.kill()
            raise RuntimeError(f"netlink monitor in {ns.name} did not start: {first!r}")
        self._events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._events.append(json.loads(line))

    def events(self) -> list[dict]:
        return list(self._events)

    def stop(self) -> list[dict]:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        return self.events()


def touches_data_plane(event: dict, network: str, devices: dict[int, str],
                       bridge_index: int | None) -> bool:
    """True for an event about what the daemon programs: its devices (`devices`, by ifindex)
    with their addresses, neighbours and FDB entries, and routes into the cluster network
    other than the local bridge's (pod ARP entries on cni0 move with traffic, untouched)."""
    if str(event.get("IFA_ADDRESS", "")).startswith("fe80:"):
        return False  # the kernel's link-local address (its DAD ends a moment after link up)
    name = event.get("IFLA_IFNAME") or event.get("IFA_LABEL")
    if event["index"] in devices or name in devices.values():
        return True
    dst = event.get("RTA_DST")
    if event["event"] in ("RTM_NEWROUTE", "RTM_DELROUTE") and dst:
        route = ipaddress.ip_network(f"{dst}/{event['dst_len']}", strict=False)
        return (route.version == 4 and route.subnet_of(ipaddress.ip_network(network))
                and event.get("RTA_OIF") != bridge_index)
    return False


if __name__ == "__main__":
    _serve()
