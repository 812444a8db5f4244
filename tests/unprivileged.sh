#!/usr/bin/env bash
# Runs pytest as the unprivileged user nobody (default: the unit tier), with HOME and TMPDIR in
# a scratch directory and a bare environment: the proof that the unit tier needs no root, no
# network namespaces, no build and nothing installed outside the venv. `make test` runs it
# before the root tiers. Run by anyone but root, it runs pytest as that user.
#
#   tests/unprivileged.sh [PYTEST ARGS...]    (default: tests/unit)
#
# An interpreter under a directory nobody may not enter (a pyenv build in /root) is made
# reachable in a mount namespace of this run alone: a tmpfs over that directory holding a
# read-only bind of the interpreter's prefix, at the same path. Nothing else of it is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ $# -gt 0 ] || set -- tests/unit
pytest=("$py" -m pytest -q -p no:cacheprovider "$@")
if [ "$(id -u)" != 0 ]; then
  exec "${pytest[@]}"
fi

scratch=$(mktemp -d /tmp/flt-unit.XXXXXX)
stage=$(mktemp -d /tmp/flt-interp.XXXXXX)
# stage is only ever a mount point inside the namespace: rmdir, never rm -r, even if a mount leaked
trap 'rm -rf "$scratch"; rmdir "$stage"' EXIT
chown nobody:nogroup "$scratch"
as_nobody=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$scratch" TMPDIR="$scratch" LANG=C.UTF-8
           PYTHONDONTWRITEBYTECODE=1 setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs)

# Every directory on the way to the interpreter's prefix must let nobody in (a test of the
# path itself: an exec can succeed where the interpreter's own subprocesses are refused).
prefix=$("$py" -c 'import sys; print(sys.base_prefix)')
blocked=
dir=
IFS=/ read -ra parts <<<"${prefix#/}"
for part in "${parts[@]}"; do
  dir="$dir/$part"
  if ! "${as_nobody[@]}" test -x "$dir"; then
    blocked=$dir
    break
  fi
done
if [ -z "$blocked" ]; then
  "${as_nobody[@]}" "${pytest[@]}"
  exit
fi
echo "unprivileged.sh: nobody may not enter $blocked; showing it only $prefix" >&2
unshare --mount --propagation private -- bash -euc '
  prefix=$1 blocked=$2 stage=$3
  shift 3
  mount --bind "$prefix" "$stage"
  mount -t tmpfs -o mode=0755,size=1m flannelette-unprivileged "$blocked"
  mkdir -p "$prefix"
  mount --bind -o ro "$stage" "$prefix"
  exec "$@"' unprivileged "$prefix" "$blocked" "$stage" "${as_nobody[@]}" "${pytest[@]}"
