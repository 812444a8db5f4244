"""Command line and FLANNELD_* environment -> conf.daemon.DaemonSettings.

Flag names are flanneld's; as in flanneld, every flag can also be set by the
environment variable FLANNELD_<FLAG> (upper case, `-` -> `_`), and a flag on the
command line wins over the environment. Errors are one line naming the flag.
"""
from __future__ import annotations

import argparse
from typing import Mapping, Sequence

from pydantic import ValidationError

from conf import VERSION
from conf.daemon import DaemonSettings

ENV_PREFIX = "FLANNELD_"


class SettingsError(Exception):
    """A bad flag or environment variable; str() is the one line for the user."""


_FLAGS: list[tuple[str, str, str]] = [
    # (flag, kind, help); kind: str | list | bool | int
    ("etcd-endpoints", "str", "comma-separated etcd endpoints, tried in turn on failure"),
    ("etcd-prefix", "str", "etcd prefix (default /coreos.com/network)"),
    ("etcd-certfile", "str", "client certificate for etcd TLS"),
    ("etcd-keyfile", "str", "client key for etcd TLS"),
    ("etcd-cafile", "str", "CA bundle that signed the etcd server certificate"),
    ("etcd-username", "str", "etcd user (auth enabled)"),
    ("etcd-password", "str", "etcd password"),
    ("etcd-dial-timeout", "str", "seconds to reach etcd at startup before giving up (10)"),
    ("iface", "list", "interface (name or IP) for inter-node traffic; repeat or comma list"),
    ("iface-regex", "list", "regex on interface addresses, then names, when no --iface exists;"
                            " repeat or comma list"),
    ("iface-can-reach", "str", "use the interface (and source address) of the route to this IP"),
    ("public-ip", "str", "IPv4 address other nodes use to reach this one"),
    ("public-ipv6", "str", "IPv6 address other nodes use to reach this one"),
    ("subnet-file", "str", "where to write subnet.env (default /run/flannel/subnet.env)"),
    ("ip-masq", "bool", "install masquerade rules for traffic leaving the overlay"),
    ("iptables-mode", "str", "iptables backend for those rules: auto (what the node uses),"
                             " legacy or nft (default auto)"),
    ("healthz-ip", "str", "address for /healthz, /readyz and /metrics (default 0.0.0.0)"),
    ("healthz-port", "str", "port for /healthz, /readyz and /metrics (0 = off)"),
    ("subnet-lease-renew-margin", "str", "minutes before expiry to renew the lease (1..1439, 60)"),
    ("cni-socket", "str", "unix socket of the CNI fast path ('' = off)"),
    ("cni-bridge", "str", "the pods' bridge, re-addressed when the subnet changes (default cni0)"),
    ("state-dir", "str", "daemon state (VTEP MAC), default /var/lib/flannelette"),
    ("lease-ttl", "str", "lease TTL in seconds (default 86400)"),
    ("reconcile-interval", "str", "seconds between periodic reconciles (default 10)"),
    ("health-probe-rate", "str", "health mesh: echoes per second to peers, at most (default 20, 0 = off)"),
    ("health-probe-interval", "str", "health mesh: seconds between two echoes to one peer, at least (default 10)"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2
        raise SettingsError(message)


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on", ""):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    raise SettingsError(f"--{name}: {text!r} is not a boolean")


def _build_parser() -> _Parser:
    p = _Parser(prog="flanneletted", description="flannelette node daemon",
                allow_abbrev=False)
    for flag, kind, help_text in _FLAGS:
        if kind == "bool":
            p.add_argument(f"--{flag}", nargs="?", const="true", default=None, help=help_text)
        elif kind == "list":
            p.add_argument(f"--{flag}", action="append", default=None, help=help_text)
        else:
            p.add_argument(f"--{flag}", default=None, help=help_text)
    p.add_argument("-v", default=None, help="log verbosity (0 = info, >= 1 = debug)")
    p.add_argument("--version", action="version", version=f"flanneletted v{VERSION}")
    return p


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> DaemonSettings:
    """Flags override FLANNELD_* variables, which override the defaults."""
    args = vars(_build_parser().parse_args(list(argv)))
    raw: dict[str, object] = {}
    where: dict[str, str] = {}
    for flag, kind, _ in _FLAGS + [("v", "str", "")]:
        field = flag.replace("-", "_")
        env_name = ENV_PREFIX + field.upper()
        value = args.get(field)
        source = f"--{flag}" if flag != "v" else "-v"
        if value is None and env_name in environ:
            value, source = environ[env_name], env_name
            if kind == "list":
                value = [value]
        if value is None:
            continue
        raw[field] = _parse_bool(flag, value) if kind == "bool" else value
        where[field] = source
    try:
        return DaemonSettings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        name = where.get(field, f"--{field.replace('_', '-')}" if field else "settings")
        msg = err["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{name}: {msg}") from None
