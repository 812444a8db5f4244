#!/usr/bin/env bash
# Checks the README's promise on a fresh Debian 12: in a minbase bookworm root, as an operator
# would (`apt-get install git make python3`, clone), run `make demo`, `make demo-down` and
# `make test`, each timed, logs in <root>/root/fresh-logs. Run as root on the host:
#
#   tests/fresh_debian/run.sh                         # root /work/fresh-debian, all three steps
#   FRESH_STEPS="demo demo-down" tests/fresh_debian/run.sh
#   FRESH_PATCH=fix.patch tests/fresh_debian/run.sh   # try a change on the fresh clone first
#
# The session runs in its own pid namespace and its own mount namespace whose root is the new
# system (pivot_root, not a bare chroot: `ip netns exec` needs / to be a mount point, and
# /proc/PID/exe must show the new system's paths). Its /run is a fresh tmpfs, so its netns live
# there, not in the host's /run/netns; the host's links, routes and iptables are never touched.
# Everything it mounts is unmounted on exit. The root directory is kept, and a later run skips
# debootstrap but not what earlier runs installed: for a truly fresh check, remove it first.
set -euo pipefail
R=${FRESH_ROOT:-/work/fresh-debian}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
STEPS=${FRESH_STEPS:-demo demo-down test}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

if [ ! -f "$R/etc/debian_version" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$R.debootstrap.log" 2>&1
fi
printf 'deb %s %s main\n' "$MIRROR" bookworm "$MIRROR" bookworm-updates \
  "${MIRROR%/debian}/debian-security" bookworm-security >"$R/etc/apt/sources.list"
# A TLS-intercepting proxy's CA that this host trusts must be trusted there too (pip, apt).
mkdir -p "$R/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/resolv.conf "$R/etc/resolv.conf"
rm -rf "$R/root/flannelette" "$R/root/fresh-logs"
git clone -q "$REPO" "$R/root/flannelette"
[ -z "${FRESH_PATCH:-}" ] || git -C "$R/root/flannelette" apply "$(realpath "$FRESH_PATCH")"
echo "testing $(git -C "$R/root/flannelette" log -1 --format='%h %s')${FRESH_PATCH:+ + $FRESH_PATCH}"

unmount_all() {
  findmnt -rn -o TARGET | grep -E "^$R(/|$)" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}
trap unmount_all EXIT
mountpoint -q "$R" || { mount --bind "$R" "$R"; mount --make-private "$R"; }
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys" && mount --make-rslave "$R/sys"
mount --rbind /dev "$R/dev" && mount --make-rslave "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"

cat >"$R/root/fresh-session.sh" <<'IN'
L=/root/fresh-logs; mkdir -p $L; cd /root/flannelette
step() {  # step NAME COMMAND...
  local name=$1 s=$(date +%s); shift; "$@" >"$L/$name.log" 2>&1; local rc=$?
  printf '%-10s rc=%s %4ss  %s\n' "$name" "$rc" "$(( $(date +%s) - s ))" "$(tail -1 "$L/$name.log")" | tee -a $L/steps
}
step apt bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q git make python3'
for s in $STEPS; do step "$s" make "$s"; done
echo "netns left: $(ip netns list | tr '\n' ' ')" | tee -a $L/steps
echo "/run: $(ls /run | tr '\n' ' ')" | tee -a $L/steps
for p in /proc/[0-9]*; do  # this shell is pid 1 of the session's pid namespace; no pipe: no subshell
  [ "${p#/proc/}" = 1 ] || echo "process left: ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline")"
done >$L/left 2>/dev/null
tee -a $L/steps <$L/left
IN
mkdir -p "$R/.oldroot"
# Own pid namespace: its /proc lists only the session, and whatever a step leaves running
# (reported above) ends with it.
unshare --mount --pid --fork --propagation private /bin/sh -c '
  cd "$1" && pivot_root . .oldroot && umount -l /.oldroot && mount -t proc proc /proc &&
  exec env -i HOME=/root TERM=xterm LANG=C.UTF-8 STEPS="$2" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot / bash /root/fresh-session.sh' \
  sh "$R" "$STEPS"
