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

iptables 1.8 comes as two clients writing to different kernel tables: legacy
(x_tables) and nft. The kernel runs both, and an ACCEPT in one cannot override a
DROP in the other (a legacy FORWARD policy DROP still drops pod traffic our nft
rules accept; tests/e2e/test_forward_policy.py), so with `iptables_mode="auto"`
we use whichever the node already uses, as kubernetes-sigs/iptables-wrappers does:
kubelet's hint chains first, then the backend holding more rules, else nft.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from conf.daemon import IPTABLES_MODES

log = logging.getLogger(__name__)

MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'
KUBE_PROXY_MARK = "0x4000/0x4000"

BACKENDS = ("legacy", "nft")
# kubelet >= 1.17 declares one of these in the mangle table of the backend it uses
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


class MasqueradeError(Exception):
    pass


@dataclass(frozen=True)
class _Family:
    save: str  # iptables[-legacy|-nft]-save / ip6tables...
    restore: str
    tool: str
    network: str
    subnet: str
    multicast: str


def kubelet_hinted(save_text: str) -> bool:
    """True when an iptables-save text declares a kubelet hint chain in `*mangle`."""
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "mangle" and line.startswith(":"):
            if line[1:].split(" ", 1)[0] in KUBELET_HINT_CHAINS:
                return True
    return False


def count_rules(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-"))


def choose_backend(legacy_save: str, nft_save: str) -> str:
    """The backend in use, from both variants' save outputs (IPv4 and IPv6 joined)."""
    if kubelet_hinted(nft_save):
        return "nft"
    if kubelet_hinted(legacy_save):
        return "legacy"
    return "legacy" if count_rules(legacy_save) > count_rules(nft_save) else "nft"


def variant_tools(base: str, backend: str | None) -> tuple[str, str, str]:
    """(save, restore, tool) of `iptables`/`ip6tables`; backend None = the plain names."""
    name = f"{base}-{backend}" if backend else base
    return f"{name}-save", f"{name}-restore", name


def _have_backend(backend: str) -> bool:
    return all(shutil.which(t) for base in ("iptables", "ip6tables")
               for t in variant_tools(base, backend))


def _save_all(backend: str) -> str:
    """Every table of both families; failures count as empty. No `-t`: the legacy
    save would create a missing table, changing what the next detection sees."""
    texts = []
    for base in ("iptables", "ip6tables"):
        try:
            texts.append(subprocess.run([variant_tools(base, backend)[0]], capture_output=True,
                                        text=True, timeout=30).stdout)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(texts)


def resolve_backend(mode: str) -> str | None:
    """The iptables variant to call for `--iptables-mode`; None when this host has
    no iptables-legacy/iptables-nft binaries (only one iptables: the plain names)."""
    if mode not in IPTABLES_MODES:
        raise MasqueradeError(f"iptables mode {mode!r} is not one of {', '.join(IPTABLES_MODES)}")
    wanted = BACKENDS if mode == "auto" else (mode,)
    if not all(_have_backend(b) for b in wanted):
        log.info("iptables backend=plain mode=%s reason=no iptables-%s binaries", mode,
                 "/".join(wanted))
        return None
    if mode != "auto":
        log.info("iptables backend=%s mode=%s", mode, mode)
        return mode
    legacy, nft = _save_all("legacy"), _save_all("nft")
    backend = choose_backend(legacy, nft)
    log.info("iptables backend=%s mode=auto kubelet_hint=%s legacy_rules=%d nft_rules=%d",
             backend, kubelet_hinted(legacy) or kubelet_hinted(nft),
             count_rules(legacy), count_rules(nft))
    return backend


class Masquerade:
    """Masquerade(network, subnet, ipv6_network=None, ipv6_subnet=None, iptables_mode=None).

    Also accepts (NetworkConfig, Lease): the cluster networks and this node's lease.
    iptables_mode "auto"/"legacy"/"nft" picks the iptables variant once, here
    (see resolve_backend); None calls the plain `iptables*` names.
    """

    def __init__(self, network, subnet, ipv6_network=None, ipv6_subnet=None,
                 iptables_mode: str | None = None):
        if hasattr(network, "enable_ipv4") and hasattr(subnet, "attrs"):
            config, lease = network, subnet
            network = config.network if config.enable_ipv4 else None
            subnet = lease.subnet if config.enable_ipv4 else None
            ipv6_network = config.ipv6_network if config.enable_ipv6 else None
            ipv6_subnet = lease.ipv6_subnet if config.enable_ipv6 else None
        self.backend = resolve_backend(iptables_mode) if iptables_mode else None
        self.families: list[_Family] = []
        if network is not None and subnet is not None:
            self.families.append(_Family(*variant_tools("iptables", self.backend),
                                         _net(network), _net(subnet), "224.0.0.0/4"))
        if ipv6_network is not None and ipv6_subnet is not None:
            self.families.append(_Family(*variant_tools("ip6tables", self.backend),
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
