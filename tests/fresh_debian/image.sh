#!/usr/bin/env bash
# Replays packaging/Dockerfile without a Docker engine: the best evidence short of a real
# `docker build` that the image builds and works. Run as root on the host (about 80 s):
#
#   tests/fresh_debian/image.sh                          # the committed tree (git archive HEAD)
#   IMAGE_CONTEXT=worktree tests/fresh_debian/image.sh   # the work tree, as `docker build .`
#   IMAGE_KEEP=1 ...         # keep the roots under $IMAGE_WORK (default /work/fresh-image)
#   IMAGE_REUSE_BASE=1 ...   # reuse a kept debootstrap base instead of a fresh one
#
# What it checks:
# 1. Each stage starts from a fresh `debootstrap --variant=minbase bookworm` root made to look
#    like debian:bookworm-slim (deb822 sources for bookworm, -updates and -security, empty apt
#    lists, the slim image's dpkg path-excludes and apt settings, policy-rc.d). The Dockerfile
#    is parsed, not copied: FROM/WORKDIR/ENV/COPY/RUN of each stage are replayed in order;
#    unknown instructions stop the replay. COPY follows Docker's rules (a directory's contents,
#    dest relative to WORKDIR, owner root, modes kept), from the build context filtered by
#    packaging/Dockerfile.dockerignore, or from an earlier stage's root for --from. RUN runs
#    verbatim through /bin/sh -c as pid 1 of its own pid, mount, uts and ipc namespaces, in
#    the root by pivot_root, with Docker's default capabilities and PATH, HOME=/root, umask
#    022, a minimal /dev, a read-only /sys and copies of the host's resolv.conf and hosts.
# 2. The final stage's ENTRYPOINT (+CMD) answers --help.
# 3. In the final root: install-cni --root=/tmp/hostroot, then the installed
#    /opt/cni/bin/flannelette and flannelette-ipam answer CNI VERSION (JSON checked), with the
#    image's python3 hidden under empty mounts and an empty environment; the iptables,
#    ip, etcdctl tools the daemon and init containers run are present.
# 4. The installed tree again on a "node" without any Python: a fresh minbase root.
# Nothing is mounted in the host's mount namespace (each mount lives and dies with one
# sandbox); the host's network namespace is shared (apt and pip) but never changed.
# Harness-only, absent from a real build: pip gets the host's CA bundle (TLS-intercepting
# proxy) through PIP_CERT, from a tmpfs at /.replay that no root keeps.
# Logs: $IMAGE_LOGS (default /work/fresh-image-logs), one file per step, and a summary.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
W=${IMAGE_WORK:-/work/fresh-image}
LOGS=${IMAGE_LOGS:-/work/fresh-image-logs}
MIRROR=${IMAGE_MIRROR:-http://deb.debian.org/debian}
DOCKERFILE=${IMAGE_DOCKERFILE:-$REPO/packaging/Dockerfile}
DOCKER_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PY=/usr/bin/python3
HELPER=$W/replay.py

# The Dockerfile parser, the build context and COPY, in Python (the host's /usr/bin/python3).
write_helper() {
  cat >"$HELPER" <<'PY'
import fnmatch, glob, json, os, re, shlex, shutil, stat, sys, base64

def logical_lines(path):
    """Instructions with continuations joined as Docker does; comment lines dropped."""
    out, buf = [], None
    for line in open(path):
        line = line.rstrip("\n")
        s = line.strip()
        if s.startswith("#") or (not s and buf is None):
            continue
        if not s:
            continue  # an empty line inside a continuation
        part = line.rstrip()
        more = part.endswith("\\")
        if more:
            part = part[:-1]
        buf = part if buf is None else buf + part
        if not more:
            out.append(buf.strip()); buf = None
    if buf is not None:
        out.append(buf.strip())
    return out

def exec_or_shell(args):
    if args.startswith("["):
        return json.loads(args), True
    return args, False

def plan(path):
    workdir = "/"
    for line in logical_lines(path):
        kind, _, args = line.partition(" ")
        kind, args = kind.upper(), args.strip()
        if kind == "FROM":
            words = args.split()
            if any(w.startswith("--") for w in words):
                sys.exit(f"FROM flags not replayed: {args}")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            workdir = "/"
            print(f"FROM\t{words[0]}\t{name}")
        elif kind == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, args))
            print(f"WORKDIR\t{workdir}")
        elif kind == "ENV":
            pairs = shlex.split(args)
            if pairs and "=" not in pairs[0]:
                pairs = [pairs[0] + "=" + args.split(None, 1)[1]]
            for pair in pairs:
                print(f"ENV\t{pair}")
        elif kind == "COPY":
            words = shlex.split(args) if not args.startswith("[") else json.loads(args)
            frm = ""
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--from="):
                    frm = flag.split("=", 1)[1]
                else:
                    sys.exit(f"COPY flag not replayed: {flag}")
            print(f"COPY\t{json.dumps(words)}\t{frm}")
        elif kind == "RUN":
            cmd, is_exec = exec_or_shell(args)
            if is_exec:
                cmd = shlex.join(cmd)
            print(f"RUN\t{base64.b64encode(cmd.encode()).decode()}")
        elif kind in ("ENTRYPOINT", "CMD"):
            cmd, is_exec = exec_or_shell(args)
            print(f"{kind}\t{json.dumps(cmd if is_exec else ['/bin/sh', '-c', cmd])}")
        else:
            print(kind)

def ignore_rules(path):
    rules = []
    if os.path.exists(path):
        for line in open(path):
            p = line.strip()
            if not p or p.startswith("#"):
                continue
            negate = p.startswith("!")
            p = os.path.normpath(p.lstrip("!").strip()).lstrip("/")
            rx = ""
            i = 0
            while i < len(p):  # Go's filepath.Match plus `**`, as moby's patternmatcher
                c = p[i]
                if p.startswith("**/", i):
                    rx += "(?:.*/)?"; i += 3; continue
                if p.startswith("**", i):
                    rx += ".*"; i += 2; continue
                rx += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                i += 1
            rules.append((re.compile(rx + "$"), negate))
    return rules

def ignored(rel, rules):
    parts = rel.split("/")
    result = False
    for rx, negate in rules:
        # A pattern matching a parent directory excludes everything below it.
        if any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result

def context(src, dst, dockerfile):
    ignore = dockerfile + ".dockerignore"
    if not os.path.exists(ignore):
        ignore = os.path.join(src, ".dockerignore")
    rules = ignore_rules(ignore)
    count = 0
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, src)
            if ignored(rel, rules):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            target = os.path.join(dst, rel)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target)
            elif os.path.isdir(full):
                os.makedirs(target); shutil.copystat(full, target)
            else:
                shutil.copy2(full, target); count += 1
    print(f"context: {count} files after {ignore} ({len(rules)} rules)")

def inside(root, path):
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + "/"):
        sys.exit(f"{path} resolves outside {root}")
    return path

def copy_entry(src, dest):
    """One file, link or directory to dest, owned by root, mode and mtime kept (COPY)."""
    if os.path.islink(src):
        if os.path.lexists(dest) and not os.path.isdir(dest):
            os.unlink(dest)
        os.symlink(os.readlink(src), dest)
    elif os.path.isdir(src):
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(src):
            copy_entry(os.path.join(src, name), os.path.join(dest, name))
        shutil.copystat(src, dest)
    else:
        if os.path.lexists(dest):
            os.unlink(dest)
        shutil.copy2(src, dest)
    os.lchown(dest, 0, 0)

def makedirs_root(path):
    if not os.path.isdir(path):
        makedirs_root(os.path.dirname(path))
        os.mkdir(path, 0o755); os.chown(path, 0, 0)

def copy(frm, root, workdir, args):
    frm, root = os.path.realpath(frm), os.path.realpath(root)
    *srcs, dest = json.loads(args)
    dest_dir = dest.endswith("/") or dest.endswith("/.") or len(srcs) > 1
    dest = os.path.normpath(os.path.join(workdir, dest))
    target = inside(root, os.path.join(root, dest.lstrip("/")))
    matches = []
    for s in srcs:
        found = sorted(glob.glob(os.path.join(frm, os.path.normpath(s).lstrip("/"))))
        if not found:
            sys.exit(f"COPY: no source {s}")
        matches += found
    if len(matches) > 1 or os.path.isdir(target):
        dest_dir = True
    for m in matches:
        m = inside(frm, os.path.realpath(m))  # a source link itself is followed
        if os.path.isdir(m):
            makedirs_root(target)
            for name in os.listdir(m):
                copy_entry(os.path.join(m, name), os.path.join(target, name))
        else:
            path = os.path.join(target, os.path.basename(m)) if dest_dir else target
            makedirs_root(os.path.dirname(path))
            copy_entry(m, path)

def check_smoke(out):
    ok = True
    for exe in ("flannelette", "flannelette-ipam"):
        raw = open(os.path.join(out, exe + ".json")).read()
        err = open(os.path.join(out, exe + ".err")).read()
        try:
            reply = json.loads(raw)
            good = (reply.get("cniVersion") == "1.0.0" and "1.0.0" in reply.get("supportedVersions", [])
                    and not err.strip())
        except ValueError:
            good = False
        print(f"smoke: {exe} VERSION {'ok' if good else 'BAD'}: {raw.strip()} {err.strip()}")
        ok = ok and good
    for name in ("flanneletted-help", "status-help"):
        text = open(os.path.join(out, name)).read()
        good = "usage" in text.lower()
        print(f"smoke: {name} {'ok' if good else 'BAD'}: {text.splitlines()[0] if text else ''}")
        ok = ok and good
    sys.exit(0 if ok else 1)

cmd, *rest = sys.argv[1:]
{"plan": plan, "context": context, "copy": copy, "check-smoke": check_smoke}[cmd](*rest)
PY
}

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOGS/summary"; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$?
  if [ "${IMAGE_KEEP:-0}" = 1 ]; then
    log "kept $W"
  else
    rm -rf "$W/stage-"* "$W/context" "$W/source" "$HELPER"
    [ "${IMAGE_REUSE_BASE:-0}" = 1 ] || rm -rf "$W/base"
    rmdir "$W" 2>/dev/null || true
  fi
  local mine; mine=$(findmnt -rn -o TARGET | grep -E "^$W(/|$)" || true)
  [ -z "$mine" ] || log "LEFT MOUNTED: $mine"
  log "exit $rc"
}

# Docker's default capability set: a RUN gets no more (no CAP_SYS_ADMIN, no NET_ADMIN).
DOCKER_CAPS=-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,+setpcap,+net_bind_service,+net_raw,+sys_chroot,+mknod,+audit_write,+setfcap

# sandbox ROOT WORKDIR [NAME=VALUE]... -- COMMAND...: COMMAND in ROOT as pid 1 of new pid,
# mount, uts and ipc namespaces, with Docker's capabilities unless SANDBOX_CAPS=all; its
# mounts vanish with it, whatever happens.
sandbox() {
  local root=$1 workdir=$2; shift 2
  local caps=(setpriv --bounding-set "$DOCKER_CAPS" --inh-caps -all --)
  [ "${SANDBOX_CAPS:-docker}" = docker ] || caps=()
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  local ca=
  mkdir "$root/.replay"  # the pivot point and the harness CA; removed below, never in a layer
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then ca=/etc/ssl/certs/ca-certificates.crt; fi
  local rc=0
  unshare --mount --pid --uts --ipc --fork --kill-child --propagation private \
    /bin/bash -c '
    set -e
    r=$1 wd=$2 ca=$3; shift 3
    mount --bind "$r" "$r"                     # pivot_root wants a mount point
    mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
    mount -t tmpfs -o nosuid,mode=755,size=65536k tmpfs "$r/dev"  # a runtime'"'"'s /dev, not the host'"'"'s
    for d in null zero full random urandom tty; do
      : >"$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"
    done
    mkdir "$r/dev/pts" "$r/dev/shm" "$r/dev/mqueue"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
    mount -t tmpfs -o nosuid,nodev,noexec,size=65536k shm "$r/dev/shm"
    ln -s pts/ptmx "$r/dev/ptmx"; ln -s /proc/self/fd "$r/dev/fd"
    ln -s /proc/self/fd/0 "$r/dev/stdin"; ln -s /proc/self/fd/1 "$r/dev/stdout"
    ln -s /proc/self/fd/2 "$r/dev/stderr"
    mount -t tmpfs -o mode=755 tmpfs "$r/.replay"
    mkdir "$r/.replay/old"
    for f in resolv.conf hosts; do  # copies, as a runtime gives: the host'"'"'s stay untouched
      cp "/etc/$f" "$r/.replay/$f"
      [ -e "$r/etc/$f" ] && mount --bind "$r/.replay/$f" "$r/etc/$f"
    done
    hostname buildkitsandbox
    [ -z "$ca" ] || cp "$ca" "$r/.replay/ca.pem"
    cd "$r" && pivot_root . .replay/old && umount -l /.replay/old && rmdir /.replay/old
    mkdir -p "$wd" && cd "$wd"
    umask 022
    exec "$@"' \
    sandbox "$root" "$workdir" "$ca" "${caps[@]}" /usr/bin/env -i "PATH=$DOCKER_PATH" HOME=/root \
    ${ca:+PIP_CERT=/.replay/ca.pem} "${envs[@]}" "$@" || rc=$?
  rmdir "$root/.replay"
  return $rc
}

make_base() {
  if [ "${IMAGE_REUSE_BASE:-0}" = 1 ] && [ -f "$W/base/etc/debian_version" ]; then
    log "base: reusing $W/base"; return
  fi
  rm -rf "$W/base"
  local s=$SECONDS
  debootstrap --variant=minbase bookworm "$W/base" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 \
    || fail "debootstrap, see $LOGS/debootstrap.log"
  local b=$W/base
  # What debian:bookworm-slim has that minbase lacks (debuerreotype's slimify and minimizing
  # config, as far as this harness knows them).
  rm -f "$b/etc/apt/sources.list"
  cat >"$b/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$b/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  echo force-unsafe-io >"$b/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  cat >"$b/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$b/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$b/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$b/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf '#!/bin/sh\nexit 101\n' >"$b/usr/sbin/policy-rc.d"; chmod 755 "$b/usr/sbin/policy-rc.d"
  find "$b/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$b/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$b/usr/share/info/"* "$b/usr/share/man/"* "$b/usr/share/locale/"* \
    "$b/usr/share/lintian/overrides/"*
  rm -rf "$b/var/lib/apt/lists/"* "$b/var/cache/apt/"*.bin "$b/var/cache/apt/archives/"*.deb \
    "$b/var/log/"*.log "$b/var/log/apt/"*
  : >"$b/etc/resolv.conf"; : >"$b/etc/hostname"; : >"$b/etc/hosts"  # mount points for a runtime's copies
  log "base: debootstrap + slim settings $((SECONDS - s))s, $(du -sh "$b" | cut -f1)"
}

make_context() {
  rm -rf "$W/source" "$W/context"
  mkdir -p "$W/source"
  if [ "${IMAGE_CONTEXT:-head}" = worktree ]; then
    cp -a "$REPO/." "$W/source/"
    log "context: work tree of $REPO"
  else
    git -C "$REPO" -c tar.umask=022 archive HEAD | tar -x -C "$W/source"
    log "context: $(git -C "$REPO" log -1 --format='%h %s')"
  fi
  "$PY" "$HELPER" context "$W/source" "$W/context" "$DOCKERFILE"
  rm -rf "$W/source"
}

replay() {
  declare -gA STAGE_ROOT=()
  local stage=-1 root= workdir=/ envs=() n=0 s rc
  ENTRYPOINT='[]' CMD='[]'
  while IFS=$'\t' read -r -u 3 kind a b; do
    n=$((n + 1))
    case $kind in
      FROM)
        stage=$((stage + 1)); root=$W/stage-$stage; workdir=/; envs=(); ENTRYPOINT='[]' CMD='[]'
        [ "$a" = debian:bookworm-slim ] || fail "FROM $a: only debian:bookworm-slim is replayed"
        rm -rf "$root"; cp -a "$W/base" "$root"
        STAGE_ROOT[$stage]=$root; [ -z "$b" ] || STAGE_ROOT[$b]=$root
        log "stage $stage${b:+ ($b)}: fresh root $root" ;;
      WORKDIR) workdir=$a; mkdir -p "$root$workdir"; log "  WORKDIR $workdir" ;;
      ENV) envs+=("$a"); log "  ENV $a" ;;
      COPY)
        local from=$W/context
        if [ -n "$b" ]; then from=${STAGE_ROOT[$b]:-}; [ -n "$from" ] || fail "COPY --from=$b"; fi
        "$PY" "$HELPER" copy "$from" "$root" "$workdir" "$a" || fail "COPY $a"
        log "  COPY ${b:+--from=$b }$("$PY" -c 'import json,sys; print(" ".join(json.loads(sys.argv[1])))' "$a")" ;;
      RUN)
        s=$SECONDS; rc=0
        local shell_cmd; shell_cmd=$(printf '%s' "$a" | base64 -d)
        sandbox "$root" "$workdir" "${envs[@]}" -- /bin/sh -c "$shell_cmd" \
          >"$LOGS/stage$stage-step$n-run.log" 2>&1 </dev/null || rc=$?
        log "  RUN rc=$rc $((SECONDS - s))s  (log stage$stage-step$n-run.log)"
        [ $rc = 0 ] || { tail -30 "$LOGS/stage$stage-step$n-run.log"; fail "RUN in stage $stage"; } ;;
      ENTRYPOINT) ENTRYPOINT=$a; log "  ENTRYPOINT $a" ;;
      CMD) CMD=$a; log "  CMD $a" ;;
      LABEL|EXPOSE|STOPSIGNAL) log "  $kind (metadata, not replayed)" ;;
      *) fail "instruction $kind is not replayed by this harness" ;;
    esac
  done 3< <("$PY" "$HELPER" plan "$DOCKERFILE" || echo "PLANFAIL")
  [ "$stage" -ge 0 ] || fail "no stage parsed"
  FINAL_ROOT=$root FINAL_ENVS=("${envs[@]}")
}

check_entrypoint() {
  local argv=() rc=0
  mapfile -t argv < <("$PY" -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1]) + json.loads(sys.argv[2])]' "$ENTRYPOINT" "$CMD")
  [ ${#argv[@]} -gt 0 ] || { log "no ENTRYPOINT/CMD"; return; }
  sandbox "$FINAL_ROOT" / "${FINAL_ENVS[@]}" -- "${argv[@]}" --help >"$LOGS/entrypoint.log" 2>&1 </dev/null || rc=$?
  log "ENTRYPOINT ${argv[*]} --help: rc=$rc, $(head -1 "$LOGS/entrypoint.log")"
  [ $rc = 0 ] || fail "entrypoint --help"
}

# The node smoke test: what the install-cni init container does, then the kubelet's first exec.
smoke() {
  cat >"$FINAL_ROOT/tmp/smoke.sh" <<'IN'
set -eu
# The tools flanneletted and the init containers run (daemon/dataplane/node.py, seed-net-conf).
for t in ip iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore etcdctl; do
  command -v $t >/dev/null || { echo "missing tool: $t"; exit 1; }
done
echo "tools: $(iptables --version), $(etcdctl version | head -1), $(ip -V)"
/usr/local/bin/install-cni --root=/tmp/hostroot
ls -l /tmp/hostroot/opt/cni/bin /tmp/hostroot/etc/cni/net.d
# Hide the image's Python: the frozen executables must not need any of it.
for d in /usr/lib/python3.11 /usr/lib/python3 /usr/local/lib/python3.11; do
  [ -d "$d" ] && mount -t tmpfs -o ro,size=4k tmpfs "$d"
done
for f in /usr/bin/python3.11 /usr/bin/python3; do
  [ -e "$f" ] && mount --bind /dev/null "$f"
done
if python3 -c 'print(1)' 2>/dev/null; then echo "python3 still usable"; exit 1; fi
echo "python3 hidden"
out=/tmp/smoke-out; mkdir -p $out
for exe in flannelette flannelette-ipam; do
  rc=0
  printf '{"cniVersion":"1.0.0"}' | env -i CNI_COMMAND=VERSION /tmp/hostroot/opt/cni/bin/$exe \
    >$out/$exe.json 2>$out/$exe.err || rc=$?
  echo "$exe VERSION rc=$rc: $(cat $out/$exe.json) $(cat $out/$exe.err)"
done
rc=0; env -i /opt/flannelette/flanneletted --help >$out/flanneletted-help 2>&1 || rc=$?
echo "flanneletted --help without python rc=$rc"
rc=0; env -i /opt/flannelette/flannelette status --help >$out/status-help 2>&1 || rc=$?
echo "flannelette status --help without python rc=$rc"
IN
  local rc=0
  SANDBOX_CAPS=all sandbox "$FINAL_ROOT" / -- /bin/sh /tmp/smoke.sh >"$LOGS/smoke.log" 2>&1 </dev/null || rc=$?
  sed 's/^/    /' "$LOGS/smoke.log"
  [ $rc = 0 ] || fail "smoke script rc=$rc"
  "$PY" "$HELPER" check-smoke "$FINAL_ROOT/tmp/smoke-out" | tee -a "$LOGS/summary" \
    || fail "smoke results"
  # A node without Python: the installed tree, exec'd in a fresh minbase root (no python3).
  local node=$W/stage-node
  rm -rf "$node"; cp -a "$W/base" "$node"
  cp -a "$FINAL_ROOT/tmp/hostroot/." "$node/"
  rm -rf "$FINAL_ROOT/tmp/smoke.sh" "$FINAL_ROOT/tmp/smoke-out" "$FINAL_ROOT/tmp/hostroot"
  cat >"$node/tmp/node.sh" <<'IN'
set -eu
if command -v python3 || ls -d /usr/lib/python3* 2>/dev/null; then echo "python on the node"; exit 1; fi
echo "no python on this node"
mkdir -p /tmp/smoke-out
for exe in flannelette flannelette-ipam; do
  printf '{"cniVersion":"1.0.0"}' | env -i CNI_COMMAND=VERSION /opt/cni/bin/$exe \
    >/tmp/smoke-out/$exe.json 2>/tmp/smoke-out/$exe.err || echo "$exe rc=$?"
done
env -i /opt/flannelette/flanneletted --help >/tmp/smoke-out/flanneletted-help 2>&1 || true
env -i /opt/flannelette/flannelette status --help >/tmp/smoke-out/status-help 2>&1 || true
IN
  rc=0
  sandbox "$node" / -- /bin/sh /tmp/node.sh >"$LOGS/node.log" 2>&1 </dev/null || rc=$?
  sed 's/^/    /' "$LOGS/node.log"
  [ $rc = 0 ] || fail "node script rc=$rc"
  "$PY" "$HELPER" check-smoke "$node/tmp/smoke-out" | sed 's/^smoke:/node:/' \
    | tee -a "$LOGS/summary" || fail "node results"
  rm -rf "$node"
}

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
mkdir -p "$W" "$LOGS"; rm -f "$LOGS"/*
write_helper
trap cleanup EXIT
log "replaying $DOCKERFILE"
T0=$SECONDS
make_base
make_context
replay
check_entrypoint
smoke
log "OK: image replayed, entrypoint and node smoke test passed in $((SECONDS - T0))s"
