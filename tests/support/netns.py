"""Throwaway network namespaces. Everything a test builds lives inside them.

Names start with `flt-` so a leftover is easy to spot; `NetNS.close` (or the
context manager) deletes the namespace and with it every link inside it.
"""
from __future__ import annotations

import os
import secrets
import subprocess

PREFIX = "flt-"


def sh(*cmd: str, check: bool = True, input: bytes | None = None, env=None,
       timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, input=input, capture_output=True, env=env,
                          timeout=timeout)


class NetNS:
    """A named netns at /run/netns/<name> with loopback up."""

    def __init__(self, name: str | None = None):
        self.name = name or PREFIX + secrets.token_hex(4)
        sh("ip", "netns", "add", self.name)
        self.path = f"/run/netns/{self.name}"
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, **kw)

    def out(self, *cmd: str) -> str:
        return self.run(*cmd).stdout.decode()

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def close(self) -> None:
        if os.path.exists(self.path):
            sh("ip", "netns", "delete", self.name, check=False)

    def __enter__(self) -> "NetNS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def link_netns(a: NetNS, b: NetNS, a_if: str, b_if: str) -> None:
    """A veth pair between two namespaces, both ends up (created inside `a`)."""
    a.run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    a.run("ip", "link", "set", a_if, "up")
    b.run("ip", "link", "set", b_if, "up")
