"""Build the PyInstaller onedir of flannelette's executables, cached by source content.

    .venv/bin/python packaging/build.py [--force]      (or `make build`)

prints the onedir path (it holds the lean `flannelette` shim, `flannelette-full`, the
in-process stack that also serves as `flannelette-ipam`, and the daemon `flanneletted`;
see flannelette.spec). A build is keyed by a hash of everything that goes into it (our
bundled sources, the spec, the interpreter and the versions of PyInstaller and the
libraries it freezes), so tests and `make bench` rebuild only
after a change. Builds live under build/pyinstaller/<key>/; the last few are kept because
test installs may point at them.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "packaging" / "flannelette.spec"
ENTRIES = (REPO / "packaging" / "entry_full.py", REPO / "packaging" / "entry_daemon.py")
BUNDLED_PACKAGES = ("conf", "ipam", "cni_plugin", "daemon")
PINNED_DISTRIBUTIONS = ("pyinstaller", "pyinstaller-hooks-contrib", "pydantic", "pydantic-core",
                        "etcd-sdk-python", "grpcio", "protobuf")
BUILD_ROOT = REPO / "build" / "pyinstaller"
KEEP_BUILDS = 3
PRUNE_AFTER = 3600  # seconds
EXECUTABLE = "flannelette"
FULL_EXECUTABLE = "flannelette-full"
DAEMON_EXECUTABLE = "flanneletted"
EXECUTABLES = (EXECUTABLE, FULL_EXECUTABLE, DAEMON_EXECUTABLE)


def source_files() -> list[Path]:
    files = [SPEC, *ENTRIES, Path(__file__).resolve()]
    for package in BUNDLED_PACKAGES:
        files += sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def build_key() -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    for dist in PINNED_DISTRIBUTIONS:
        try:
            digest.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist}=none".encode())
    for path in source_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _complete(onedir: Path) -> bool:
    return all((onedir / exe).is_file() for exe in EXECUTABLES) and (onedir / ".complete").exists()


def build(force: bool = False, quiet: bool = True) -> Path:
    """The onedir for the current sources, building it when missing. Safe to call concurrently."""
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key = build_key()
        target = BUILD_ROOT / key
        onedir = target / "dist" / EXECUTABLE
        if _complete(onedir) and not force:
            os.utime(target)
            return onedir
        shutil.rmtree(target, ignore_errors=True)
        cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean",
               "--log-level", "WARN" if quiet else "INFO",
               "--workpath", str(target / "work"), "--distpath", str(target / "dist"), str(SPEC)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=quiet, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"PyInstaller failed ({proc.returncode}):\n{(proc.stderr or '')[-4000:]}")
        shutil.rmtree(target / "work", ignore_errors=True)
        (onedir / ".complete").write_text(key + "\n")
        _prune(keep=target)
        return onedir


def _prune(keep: Path) -> None:
    """Drop old builds, but none used in the last hour: a test session elsewhere may have
    installed one by symlink (build() touches a build each time it hands it out)."""
    builds = sorted((p for p in BUILD_ROOT.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    cutoff = time.time() - PRUNE_AFTER
    for old in builds[:-KEEP_BUILDS]:
        if old != keep and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the flannelette executables (PyInstaller onedir).")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    parser.add_argument("--verbose", action="store_true", help="show PyInstaller's output")
    args = parser.parse_args(argv)
    try:
        print(build(force=args.force, quiet=not args.verbose))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
