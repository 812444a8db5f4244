"""`flannelette status`: ask the node daemon for its leases and print them.

The daemon answers over the fast-path socket (op "status", see cni_plugin/shim.py) with
the JSON its status provider returns. The report's shape, which `lease_entry` builds:

    {"node": {<entry>} | null,          # this node's lease
     "network": "10.244.0.0/16",        # optional
     "leases": [{<entry>}, ...]}        # every node's lease, this one included
    entry = {"subnet", "ipv6Subnet", "publicIP", "backend", "vtepMAC",
             "expires" (unix time, 0 = no TTL), "programmed" (bool: routes/FDB here),
             "reachable" (bool or null: the health mesh's last probe of a peer)}

No daemon or etcd imports here: this runs inside the plugin executable.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from cni_plugin import shim

COLUMNS = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES", "PROGRAMMED", "REACHABLE")
REACHABLE = {True: "yes", False: "NO", None: "-"}  # None: this node, not probed yet, or no mesh


def lease_entry(lease: Any, programmed: bool) -> dict:
    """A report entry from a conf.flannel.Lease (for the daemon's status provider)."""
    attrs = lease.attrs
    vxlan = attrs.vxlan if attrs.backend_type == "vxlan" else None
    return {
        "subnet": str(lease.subnet),
        "ipv6Subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
        "publicIP": str(attrs.public_ip),
        "backend": attrs.backend_type,
        "vtepMAC": vxlan.vtep_mac if vxlan else "",
        "expires": lease.expiration,
        "programmed": programmed,
    }


def fetch_report(socket_path: str) -> dict:
    """The daemon's report; raises RuntimeError with a readable reason."""
    try:
        reply = shim.exchange(socket_path, shim.encode_request(shim.OP_STATUS, b"", b""))
    except ConnectionError as e:
        raise RuntimeError(f"the daemon at {socket_path} went away: {e}") from None
    if reply is None:
        raise RuntimeError(f"no flannelette daemon answers on {socket_path} "
                           "(is flanneletted running, and are you root?)")
    status, payload = reply
    body = json.loads(payload) if payload.strip() else {}
    if status != 0:
        raise RuntimeError(f"the daemon could not report: {body.get('msg', payload.decode(errors='replace'))}")
    return body


def describe_expiry(expires: Any, now: float) -> str:
    if not expires:
        return "never"
    try:
        left = float(expires) - now
    except (TypeError, ValueError):
        return str(expires)
    if left <= 0:
        return "expired"
    hours, rest = divmod(int(left), 3600)
    return f"in {hours}h{rest // 60:02d}m"


def _row(entry: dict, now: float) -> tuple[str, ...]:
    subnet = entry.get("subnet") or "-"
    if entry.get("ipv6Subnet"):
        subnet += f" {entry['ipv6Subnet']}"
    return (
        subnet,
        entry.get("publicIP") or "-",
        entry.get("backend") or "-",
        entry.get("vtepMAC") or "-",
        describe_expiry(entry.get("expires"), now),
        "yes" if entry.get("programmed") else "no",
        REACHABLE.get(entry.get("reachable"), "-"),
    )


def render_report(report: dict, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    lines = []
    node = report.get("node")
    if node:
        own = _row(node, now)
        lines.append(f"this node: subnet {own[0]}, public IP {own[1]}, backend {own[2]}, "
                     f"VTEP MAC {own[3]}, lease expires {own[4]}")
    else:
        lines.append("this node: no lease yet")
    if report.get("network"):
        lines.append(f"network: {report['network']}")
    rows = [COLUMNS] + [_row(e, now) for e in report.get("leases") or []]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if len(rows) == 1:
        lines.append("(no leases)")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="flannelette status",
                                     description="Show this node's lease and every node's lease.")
    parser.add_argument("--socket", default=shim.DEFAULT_SOCKET, help="the daemon's CNI socket")
    parser.add_argument("--json", action="store_true", help="print the raw report")
    args = parser.parse_args(argv)
    try:
        report = fetch_report(args.socket)
    except (RuntimeError, ValueError) as e:
        print(f"flannelette status: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render_report(report))
    return 0
