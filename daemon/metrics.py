"""A small in-process metric set rendered in Prometheus' text format (no client library).

Counters end in `_total`, durations are summaries (`_sum`, `_count`); every name gets
the `flannelette_` prefix on output. Thread-safe: the watcher, the reconciler, the
renew loop and the HTTP server all touch it.
"""
from __future__ import annotations

import threading

PREFIX = "flannelette_"

# name -> (type, help); names not listed here are rendered as untyped.
DESCRIPTIONS = {
    "leases_known": ("gauge", "Leases in etcd known to this node, its own included."),
    "reconcile_runs_total": ("counter", "Reconcile runs, by trigger."),
    "reconcile_duration_seconds": ("summary", "Time spent in reconcile runs."),
    "kernel_objects_programmed": ("gauge", "Routes, neighbours and FDB entries programmed by the last reconcile."),
    "kernel_changes_total": ("counter", "Kernel objects added, replaced or removed by reconciles."),
    "leases_rejected_total": ("counter", "Lease values in etcd ignored as malformed or hostile, by reason."),
    "refused_peers": ("gauge", "Peers the backend refuses to program (host-gw peer not on-link, ...)."),
    "devices_recreated_total": ("counter", "Devices (flannel.1, ...) recreated after they vanished."),
    "errors_total": ("counter", "Errors, by where they happened."),
    "etcd_reconnects_total": ("counter", "Times the etcd watch broke and was re-established."),
    "etcd_connected": ("gauge", "1 while the etcd watch is established."),
    "lease_renewals_total": ("counter", "Successful renewals of this node's lease."),
    "lease_takebacks_total": ("counter", "Times this node's lease was revoked or expired and taken back."),
    "lease_expiration_timestamp_seconds": ("gauge", "When this node's lease expires (unix time)."),
    "subnet_moves_total": ("counter", "Times this node moved to a new subnet because another node held its own."),
    "duplicate_public_ip": ("gauge", "1 while another daemon with our public IP holds our subnet (we wait)."),
    "masquerade_repairs_total": ("counter", "Times missing masquerade rules were re-installed."),
    "ready": ("gauge", "1 once subnet.env is written."),
    "peers_probed": ("gauge", "Peers the health mesh has probed at least once."),
    "peers_unreachable": ("gauge", "Peers whose last health-mesh echo got no answer."),
    "peer_unreachable": ("gauge", "1 for a peer whose last echo got no answer (series only for peers that failed)."),
    "peer_rtt_seconds": ("summary", "Round-trip time of answered health-mesh echoes."),
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple], float] = {}

    @staticmethod
    def _key(name: str, labels: dict) -> tuple[str, tuple]:
        return name, tuple(sorted(labels.items()))

    def inc(self, name: str, by: float = 1, **labels: str) -> None:
        key = self._key(name, labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + by

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(name, labels)] = value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        with self._lock:
            for suffix, by in (("_sum", seconds), ("_count", 1)):
                key = self._key(name + suffix, labels)
                self._values[key] = self._values.get(key, 0) + by

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(name, labels), 0)

    def total(self, name: str) -> float:
        """Sum over every label set of one name."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        described: set[str] = set()
        for (name, labels), value in items:
            base = _family(name)
            if base not in described:
                described.add(base)
                kind, text = DESCRIPTIONS.get(base, ("untyped", base))
                lines += [f"# HELP {PREFIX}{base} {text}", f"# TYPE {PREFIX}{base} {kind}"]
            lines.append(f"{PREFIX}{name}{_labels(dict(labels))} {_number(value)}")
        return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    for suffix in ("_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in DESCRIPTIONS:
            return name[: -len(suffix)]
    return name

