"""flannel's masquerade and forward rules (`--ip-masq`), in chains of their own.

With C the cluster network and P this node's subnet, as flanneld >= 0.20 does:

    nat    POSTROUTING -> FLANNEL-POSTRTG
           kube-proxy-marked (0x4000)  RETURN   (kube-proxy already NATs it)
           -s P -d C                   RETURN   (pod to pod keeps its source)
           -s C -d P                   RETURN
           ! -s C -d P                 RETURN   (outside to local pods keeps its source)
           -s C ! -d 224.0.0.0/4       MASQUERADE --random-fully   (pods to outside)
           ! -s C -d C                 MASQUERADE --random-fully   (host to remote pods)
    filter FORWARD -> FLANNEL-FWD: -s C ACCEPT, -d C ACCEPT (FORWARD policy DROP hosts)

`ensure()` writes everything as one `iptables-restore --noflush` batch: declaring
a chain there empties it, so the rules always end up complete and in order.
`check()` compares `iptables-save` with the expected lines, for the periodic re-check.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import shlex
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'
KUBE_PROXY_MARK = "0x4000/0x4000"


class MasqueradeError(Exception):
    pass


@dataclass(frozen=True)
class _Family:
    save: str  # iptables-save / ip6tables-save
    restore: str
    tool: str
    network: str
    subnet: str
    multicast: str


class Masquerade:
    """Masquerade(network, subnet, ipv6_network=None, ipv6_subnet=None).

    Also accepts (NetworkConfig, Lease): the cluster networks and this node's lease.
    """

    def __init__(self, network, subnet, ipv6_network=None, ipv6_subnet=None):
        if hasattr(network, "enable_ipv4") and hasattr(subnet, "attrs"):
            config, lease = network, subnet
            network = config.network if config.enable_ipv4 else None
            subnet = lease.subnet if config.enable_ipv4 else None
            ipv6_network = config.ipv6_network if config.enable_ipv6 else None
            ipv6_subnet = lease.ipv6_subnet if config.enable_ipv6 else None
        self.families: list[_Family] = []
        if network is not None and subnet is not None:
            self.families.append(_Family("iptables-save", "iptables-restore", "iptables",
                                         _net(network), _net(subnet), "224.0.0.0/4"))
        if ipv6_network is not None and ipv6_subnet is not None:
            self.families.append(_Family("ip6tables-save", "ip6tables-restore", "ip6tables",
                                         _net(ipv6_network), _net(ipv6_subnet), "ff00::/8"))
        self._random_fully = {f.tool: _supports_random_fully(f.tool) for f in self.families}

    def rules(self, fam: _Family) -> dict[str, list[str]]:
        """Expected `iptables-save` lines of our chains, by table."""
        c, p = fam.network, fam.subnet
        rf = " --random-fully" if self._random_fully.get(fam.tool) else ""
        return {
            "nat": [
                f"-A FLANNEL-POSTRTG -m mark --mark {KUBE_PROXY_MARK} {MASQ_COMMENT} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {p} -d {c} {MASQ_COMMENT} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {c} -d {p} {MASQ_COMMENT} -j RETURN",
                f"-A FLANNEL-POSTRTG ! -s {c} -d {p} {MASQ_COMMENT} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {c} ! -d {fam.multicast} {MASQ_COMMENT} -j MASQUERADE{rf}",
                f"-A FLANNEL-POSTRTG ! -s {c} -d {c} {MASQ_COMMENT} -j MASQUERADE{rf}",
            ],
            "filter": [
                f"-A FLANNEL-FWD -s {c} {FWD_COMMENT} -j ACCEPT",
                f"-A FLANNEL-FWD -d {c} {FWD_COMMENT} -j ACCEPT",
            ],
        }

    JUMPS = {"nat": f"-A POSTROUTING {MASQ_COMMENT} -j FLANNEL-POSTRTG",
             "filter": f"-A FORWARD {FWD_COMMENT} -j FLANNEL-FWD"}
    CHAINS = {"nat": "FLANNEL-POSTRTG", "filter": "FLANNEL-FWD"}

    def ensure(self) -> None:
        """Install (or re-install) every rule in one batch per address family."""
        for fam in self.families:
            saved = {t: _save(fam, t) for t in ("nat", "filter")}
            lines = []
            for table, rules in self.rules(fam).items():
                lines += [f"*{table}", f":{self.CHAINS[table]} - [0:0]", *rules]
                if self.JUMPS[table] not in saved[table]:
                    lines.append(self.JUMPS[table])
                lines.append("COMMIT")
            _run([fam.restore, "--noflush", "-w"], "\n".join(lines) + "\n")

    def check(self) -> bool:
        """True when every rule is present, in order, and the jumps exist."""
        for fam in self.families:
            for table, rules in self.rules(fam).items():
                saved = _save(fam, table)
                chain = [line for line in saved if line.startswith(f"-A {self.CHAINS[table]} ")]
                if chain != rules or self.JUMPS[table] not in saved:
                    return False
        return True

    def remove(self) -> None:
        """Delete our jumps and chains (not done on shutdown: pods keep working)."""
        for fam in self.families:
            for table, chain in self.CHAINS.items():
                jump = shlex.split(self.JUMPS[table].replace("-A ", "-D ", 1))
                subprocess.run([fam.tool, "-w", "-t", table, *jump], capture_output=True)
                subprocess.run([fam.tool, "-w", "-t", table, "-F", chain], capture_output=True)
                subprocess.run([fam.tool, "-w", "-t", table, "-X", chain], capture_output=True)


def _net(value) -> str:
    return str(ipaddress.ip_network(str(value), strict=False))


def _save(fam: _Family, table: str) -> list[str]:
    return _run([fam.save, "-t", table], None).splitlines()


def _run(cmd: list[str], stdin: str | None) -> str:
    try:
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MasqueradeError(f"{cmd[0]} failed: {e}") from None
    if out.returncode != 0:
        raise MasqueradeError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.returncode}")
    return out.stdout


def _supports_random_fully(tool: str) -> bool:
    """--random-fully needs iptables >= 1.6.2 (flannel's test)."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return False
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return bool(m) and tuple(map(int, m.groups())) >= (1, 6, 2)
