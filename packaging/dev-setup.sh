#!/usr/bin/env bash
# Installs what flannelette's tests, demo and PyInstaller build need on Debian 12 (run as
# root): Debian packages (etcd, the reference CNI plugins, iproute2, iptables, and what
# PyInstaller needs from the system) and a venv in .venv. Only what is missing is installed.
#
#   packaging/dev-setup.sh             install what is missing, then the venv
#   packaging/dev-setup.sh --missing   print the Debian packages it would install, change nothing
#
# The interpreter is $PYTHON, else python3 on PATH (a pyenv build or Debian's /usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."
# procps (sysctl) and curl run inside the test namespaces, openssl makes the etcd TLS test PKI,
# ca-certificates lets the venv's pip reach PyPI: minimal Debian 12 images have none of them.
# podman (4.3, CNI backend) and busybox-static (the e2e's image, built locally) serve the podman e2e.
# iperf3 serves the data-plane benchmark (pod-to-pod and underlay throughput).
TOOLS="etcd-server etcd-client containernetworking-plugins iproute2 iptables tcpdump iputils-ping strace
       procps curl openssl ca-certificates podman busybox-static iperf3"
py=${PYTHON:-$(command -v python3 || true)}

# The Debian packages this machine lacks, one per line.
missing_packages() {
  local p
  for p in $TOOLS; do
    dpkg -s "$p" >/dev/null 2>&1 || echo "$p"
  done
  command -v objdump >/dev/null || echo binutils  # PyInstaller reads library deps with objdump
  command -v cc >/dev/null || echo gcc  # build.py compiles packaging/launcher.c
  if [ -z "$py" ]; then  # no Python at all: Debian 12's, with what the next two checks ask for
    echo python3 python3-venv libpython3.11 libpython3.11-dev
    return
  fi
  local venv_py=.venv/bin/python
  if [ ! -x "$venv_py" ]; then
    venv_py=$py
    # Debian moves ensurepip (pip inside a new venv) out of python3 into python3-venv.
    "$py" -c 'import ensurepip' 2>/dev/null || echo python3-venv
  fi
  # PyInstaller bundles the shared libpython; Debian's python3 is linked statically and
  # ships the shared one separately (libpython3.X). A pyenv build needs --enable-shared.
  # launcher.c also needs the interpreter's headers (Debian: libpython3.X-dev).
  local soname libdir ver include debian=
  read -r soname libdir ver include < <("$venv_py" -c 'import sys, sysconfig as s
print(s.get_config_var("INSTSONAME") or "-", s.get_config_var("LIBDIR") or "-", "%d.%d" % sys.version_info[:2],
      s.get_paths()["include"])')
  dpkg -S "$(readlink -f "$venv_py")" >/dev/null 2>&1 && debian=1  # Debian's own interpreter
  if [ ! -e "$libdir/$soname" ] && ! { ldconfig -p 2>/dev/null || true; } | grep -qF "$soname"; then
    if [ -n "$debian" ]; then
      echo "libpython$ver"
    else
      echo "dev-setup: $venv_py has no shared $soname; PyInstaller (make build) needs one" >&2
    fi
  fi
  if [ ! -f "$include/Python.h" ]; then
    if [ -n "$debian" ]; then
      echo "libpython$ver-dev"
    else
      echo "dev-setup: no Python.h in $include; make build needs the interpreter's headers" >&2
    fi
  fi
}

missing=$(missing_packages | tr '\n' ' ' | sed 's/ *$//')
if [ "${1:-}" = "--missing" ]; then
  [ -z "$missing" ] || echo "$missing"
  exit 0
fi
if [ -n "$missing" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
py=${py:-/usr/bin/python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c packaging/constraints.txt -e '.[test,build,bench]'
