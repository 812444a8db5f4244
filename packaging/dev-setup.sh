#!/usr/bin/env bash
# Installs what flannelette's tests and demo need on Debian 12 (run as root):
# Debian packages (etcd, the reference CNI plugins, iproute2, iptables) and a venv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs="etcd-server etcd-client containernetworking-plugins iproute2 iptables tcpdump iputils-ping"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
py=${PYTHON:-$(command -v python3)}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,build]'
