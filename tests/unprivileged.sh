#!/usr/bin/env bash
# Runs pytest as the unprivileged user nobody (default: the unit tier), with HOME and TMPDIR in
# a scratch directory and a bare environment: the proof that the unit tier needs no root, no
# network namespaces, no build and nothing installed outside the venv. `make test` runs it
# before the root tiers. Run by anyone but root, it runs pytest as that user.
#
#   tests/unprivileged.sh [PYTEST ARGS...]    (default: tests/unit)
#
# The checkout and the interpreter may sit under a directory nobody may not enter (a clone or
# a pyenv build in /root). Then, in a mount namespace of this run alone, a tmpfs covers that
# directory and holds read-only binds of just the checkout and the interpreter's prefix, at
# their own paths; nothing else of it is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ $# -gt 0 ] || set -- tests/unit
pytest=("$py" -m pytest -q -p no:cacheprovider "$@")
if [ "$(id -u)" != 0 ]; then
  exec "${pytest[@]}"
fi

scratch=$(mktemp -d /tmp/flt-unit.XXXXXX)
stages=()
cleanup() {
  rm -rf "$scratch"
  # a stage is only ever a mount point inside the namespace: rmdir, never rm -r
  for stage in "${stages[@]}"; do rmdir "$stage"; done
}
trap cleanup EXIT
chown nobody:nogroup "$scratch"
flt_settings=()  # FLT_SOAK, FLT_CRASH_SEED and the like still reach the tests
while IFS= read -r setting; do flt_settings+=("$setting"); done < <(env | grep '^FLT_' || true)
as_nobody=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$scratch" TMPDIR="$scratch" LANG=C.UTF-8
           PYTHONDONTWRITEBYTECODE=1 "${flt_settings[@]}" setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs)

# The first directory on the way to $1 (itself included) that nobody may not enter. The path
# is walked as nobody: an exec can succeed where the interpreter's own subprocesses are refused.
blocked_dir() {
  local dir= part parts
  IFS=/ read -ra parts <<<"${1#/}"
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    if ! "${as_nobody[@]}" test -x "$dir"; then
      echo "$dir"
      return
    fi
  done
}

checkout=$(pwd -P)
prefix=$("$py" -c 'import sys; print(sys.base_prefix)')
binds=()  # blocked directory, path to show in it, stage; three words per path
for path in "$checkout" "$prefix"; do
  blocked=$(blocked_dir "$path")
  [ -n "$blocked" ] || continue
  if [ "$blocked" = "$path" ]; then
    echo "unprivileged.sh: nobody may not enter $path itself" >&2
    exit 1
  fi
  stage=$(mktemp -d /tmp/flt-stage.XXXXXX)
  stages+=("$stage")
  binds+=("$blocked" "$path" "$stage")
  echo "unprivileged.sh: nobody may not enter $blocked; this run shows it only $path" >&2
done
if [ ${#binds[@]} -eq 0 ]; then
  "${as_nobody[@]}" "${pytest[@]}"
  exit
fi
unshare --mount --propagation private -- bash -euc '
  count=$1
  shift
  binds=("${@:1:count}")
  shift "$count"
  for ((i = 0; i < count; i += 3)); do mount --bind "${binds[i+1]}" "${binds[i+2]}"; done
  covered="|"
  for ((i = 0; i < count; i += 3)); do
    case $covered in *"|${binds[i]}|"*) continue ;; esac
    mount -t tmpfs -o mode=0755,size=1m flt-unprivileged "${binds[i]}"
    covered="$covered${binds[i]}|"
  done
  for ((i = 0; i < count; i += 3)); do
    mkdir -p "${binds[i+1]}"
    mount --bind -o ro "${binds[i+2]}" "${binds[i+1]}"
  done
  exec "$@"' unprivileged "${#binds[@]}" "${binds[@]}" "${as_nobody[@]}" "${pytest[@]}"
