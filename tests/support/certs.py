"""A throwaway PKI for etcd TLS tests, made with the `openssl` command line.

`make_pki(dir, server_ip)` writes a CA, a server certificate for server_ip (IP SAN),
a client certificate signed by that CA, and a second client certificate signed by an
unrelated CA (what a node with the wrong credentials would present).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

DAYS = "2"
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_cert: str  # signed by another CA
    rogue_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(directory: str, name: str) -> tuple[str, str]:
    crt, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    _openssl("req", "-x509", *CURVE, "-keyout", key, "-out", crt, "-days", DAYS,
             "-subj", f"/CN={name}")
    return crt, key


def _leaf(directory: str, name: str, ca: tuple[str, str], extensions: str) -> tuple[str, str]:
    crt, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    csr, ext = os.path.join(directory, f"{name}.csr"), os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(extensions)
    _openssl("req", "-new", *CURVE, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", crt, "-days", DAYS, "-extfile", ext)
    return crt, key


def make_pki(directory: str, server_ip: str) -> Pki:
    os.makedirs(directory, exist_ok=True)
    ca = _ca(directory, "flt-test-ca")
    server = _leaf(directory, "etcd-server", ca,
                   f"subjectAltName=IP:{server_ip},IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    client = _leaf(directory, "flanneletted", ca, "extendedKeyUsage=clientAuth\n")
    rogue_ca = _ca(directory, "flt-rogue-ca")
    rogue = _leaf(directory, "rogue", rogue_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1], rogue_cert=rogue[0], rogue_key=rogue[1])
