"""Build the PyInstaller onedir of flannelette's executables, cached by source content.

    .venv/bin/python packaging/build.py [--force]      (or `make build`)

prints the onedir path (it holds the lean `flannelette` shim, `flannelette-full`, the
in-process stack that also serves as `flannelette-ipam`, and the daemon `flanneletted`;
see flannelette.spec). PyInstaller builds the last two; `flannelette` is
packaging/launcher.c, compiled here against the bundled libpython, with the shim and
the encodings it starts with as .pyc files in _internal/lean. A build is keyed by a hash of everything that goes into it (our
bundled sources, the spec, the interpreter and the versions of PyInstaller and the
libraries it freezes), so tests and `make bench` rebuild only
after a change. Builds live under build/pyinstaller/<key>/; the last few are kept because
test installs may point at them.
"""
from __future__ import annotations

import argparse
import encodings  # the one package an interpreter imports while it initialises
import fcntl
import hashlib
import importlib.metadata
import os
import py_compile
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "packaging" / "flannelette.spec"
ENTRIES = (REPO / "packaging" / "entry_full.py", REPO / "packaging" / "entry_daemon.py")
LAUNCHER = REPO / "packaging" / "launcher.c"
SHIM = REPO / "cni_plugin" / "shim.py"
LEAN_DIR = "_internal/lean"  # launcher.c's module path, with the lib-dynload dir
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
    files = [SPEC, *ENTRIES, LAUNCHER, Path(__file__).resolve()]
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
        add_launcher(onedir)
        (onedir / ".complete").write_text(key + "\n")
        _prune(keep=target)
        return onedir


def add_launcher(onedir: Path) -> None:
    """`flannelette`: launcher.c linked to the onedir's libpython, plus _internal/lean."""
    lean = onedir / LEAN_DIR
    for source in sorted(Path(encodings.__file__).parent.glob("*.py")):
        py_compile.compile(str(source), cfile=str(lean / "encodings" / (source.stem + ".pyc")),
                           dfile=f"encodings/{source.name}", doraise=True)
    py_compile.compile(str(SHIM), cfile=str(lean / "flannelette_shim.pyc"), dfile="flannelette_shim.py",
                       doraise=True)
    internal = onedir / "_internal"
    libpython = internal / sysconfig.get_config_var("INSTSONAME")
    headers = Path(sysconfig.get_paths()["include"])
    if not libpython.is_file():
        raise RuntimeError(f"PyInstaller bundled no {libpython.name} in {internal}")
    if not (headers / "Python.h").is_file():
        raise RuntimeError(f"no Python.h in {headers}: install the interpreter's headers "
                           f"(Debian: python{sysconfig.get_python_version()}-dev)")
    # Where PyInstaller put the extension modules the shim imports (none when built in).
    dirs = {p.parent for name in ("_json", "_socket") for p in internal.rglob(f"{name}.*.so")}
    if len(dirs) > 1:
        raise RuntimeError(f"the shim's extension modules are in several directories: {sorted(dirs)}")
    dynload = (dirs.pop() if dirs else internal).relative_to(onedir)
    cmd = [os.environ.get("CC", "cc"), "-O2", "-s", "-Wall", "-Werror", f"-I{headers}",
           f'-DLIB_DYNLOAD="{dynload}"', "-o", str(onedir / EXECUTABLE), str(LAUNCHER), str(libpython),
           # DT_RPATH, not RUNPATH: it also serves libpython's own needs (libz, libexpat on Debian)
           "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/_internal"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {LAUNCHER.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    # The launcher must start from a clean environment, as a runtime runs it.
    check = subprocess.run([str(onedir / EXECUTABLE)], input=b"{}", env={"CNI_COMMAND": "VERSION"},
                           capture_output=True, timeout=60)
    if check.returncode != 0 or b'"supportedVersions"' not in check.stdout:
        raise RuntimeError(f"the built {EXECUTABLE} does not run: {check.stdout[-500:]!r} {check.stderr[-2000:]!r}")


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
