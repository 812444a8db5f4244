"""Install flannelette on a node (or under any root, for tests and images).

    .venv/bin/python packaging/install.py [--root /] [--cni-bin-dir /opt/cni/bin]
        [--conf-dir /etc/cni/net.d] [--form frozen|script] [--onedir DIR] [--cni-only]

Layout under <root> (frozen form, the default):
    opt/flannelette -> flannelette-<version>/   the PyInstaller onedir (packaging/build.py)
    opt/cni/bin/flannelette        -> ../../flannelette/flannelette        (lean shim)
    opt/cni/bin/flannelette-ipam   -> ../../flannelette/flannelette-full   (dispatches on argv[0])
    usr/local/bin/flanneletted     -> ../../../opt/flannelette/flanneletted
    etc/cni/net.d/10-flannelette.conflist
    etc/systemd/system/flanneletted.service
    etc/default/flanneletted        an example of the site settings; never overwritten
`--onedir DIR` installs an existing build instead of building (or taking the build cache);
`--cni-only` installs the plugin and the conflist only, as packaging/image/install-cni
does from the container image (tests/packaging/test_install.py checks both lay out the same tree).
script form: `#!<this python>` stubs that import this checkout (development machines,
no PyInstaller needed).

Every file and link is replaced atomically, so a runtime never execs a half-written
plugin: a new onedir is copied under a fresh versioned name and the opt/flannelette link
flipped with rename(2). The version it replaced is kept (a plugin exec'd just before the
flip still loads its libraries from there) and older ones are removed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHIPPED = REPO / "conf" / "shipped"
CONFLIST = SHIPPED / "10-flannelette.conflist"
UNIT = SHIPPED / "flanneletted.service"
UNIT_DEFAULTS = SHIPPED / "flanneletted.default"
ONEDIR_HOME = "/opt/flannelette"
DAEMON_PATH = "/usr/local/bin/flanneletted"
UNIT_PATH = "/etc/systemd/system/flanneletted.service"
DEFAULTS_PATH = "/etc/default/flanneletted"
# installed name -> the onedir executable it runs
CNI_EXECUTABLES = {"flannelette": "flannelette", "flannelette-ipam": "flannelette-full"}
DAEMON_EXECUTABLE = "flanneletted"

STUB = """#!{python} -I{flags}
# flannelette {what} (script form) from {repo}
import sys
sys.path[:0] = {paths!r}
{body}
"""
SHIM_BODY = "from cni_plugin.shim import main\nmain()"
DAEMON_BODY = "from daemon.main import main\nsys.exit(main())"


def load_script(name: str):
    """A script of this directory as a module (packaging/ is no package: the name would
    shadow PyPI's `packaging`, and `build` is a PyPI name too)."""
    if f"flannelette_{name}" in sys.modules:
        return sys.modules[f"flannelette_{name}"]
    spec = importlib.util.spec_from_file_location(f"flannelette_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = load_script("build")


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _replace_symlink(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".{link.name}.new")
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    os.symlink(target, staging)
    os.replace(staging, link)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(data)
    os.chmod(staging, mode)
    os.replace(staging, path)


def _link_to(link: Path, target: Path) -> str:
    """A relative link target, so the tree stays valid when <root> is mounted elsewhere."""
    return os.path.relpath(target, link.parent)


def install_onedir(root: Path, onedir: Path, link: bool = False) -> Path:
    """<root>/opt/flannelette: a link flipped to a fresh versioned copy of `onedir`
    (with `link`, straight to `onedir` itself: tests skip copying 50 MB)."""
    home = under(root, ONEDIR_HOME)
    opt = home.parent
    opt.mkdir(parents=True, exist_ok=True)
    previous = os.readlink(home) if home.is_symlink() else None
    if link:
        _replace_symlink(home, str(onedir))
    else:
        version = f"{home.name}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        staging = opt / f".{version}"
        shutil.copytree(onedir, staging, symlinks=True)
        os.rename(staging, opt / version)
        if home.exists() and not home.is_symlink():  # a plain directory from an older install
            old = opt / f"{home.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(home, old)
        _replace_symlink(home, version)
    keep = {os.readlink(home), previous}
    for old in opt.iterdir():
        if (old.name.startswith(f"{home.name}-") or old.name == f"{home.name}.old") and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return home


def _script_stubs(root: Path, bin_dir: Path, cni_only: bool) -> dict[str, Path]:
    paths = [str(REPO), sysconfig.get_paths()["purelib"]]
    installed = {}
    for name in CNI_EXECUTABLES:  # one stub for both names: the shim dispatches on argv[0]
        stub = STUB.format(python=sys.executable, flags="S", what="CNI plugin", repo=REPO,
                           paths=paths, body=SHIM_BODY)
        _write_atomic(bin_dir / name, stub.encode(), 0o755)
        installed[name] = bin_dir / name
    if not cni_only:  # the daemon keeps site: it starts once, its start-up cost does not matter
        stub = STUB.format(python=sys.executable, flags="", what="daemon", repo=REPO,
                           paths=paths, body=DAEMON_BODY)
        _write_atomic(under(root, DAEMON_PATH), stub.encode(), 0o755)
        installed[DAEMON_EXECUTABLE] = under(root, DAEMON_PATH)
    return installed


def install(root: str = "/", cni_bin_dir: str = "/opt/cni/bin", conf_dir: str = "/etc/cni/net.d",
            form: str = "frozen", link: bool = False, onedir: Path | None = None,
            cni_only: bool = False) -> dict[str, Path]:
    """Install and return {name: installed path}: the executables, conflist, unit, defaults."""
    root_path = Path(root)
    bin_dir = under(root_path, cni_bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    installed: dict[str, Path] = {}
    if form == "frozen":
        source = Path(onedir) if onedir else build.build()
        missing = [exe for exe in build.EXECUTABLES if not (source / exe).is_file()]
        if missing:
            raise RuntimeError(f"{source} is not a flannelette build: no {', '.join(missing)}")
        home = install_onedir(root_path, source.resolve(), link)
        for name, exe in CNI_EXECUTABLES.items():
            _replace_symlink(bin_dir / name, _link_to(bin_dir / name, home / exe))
            installed[name] = bin_dir / name
        if not cni_only:
            daemon = under(root_path, DAEMON_PATH)
            _replace_symlink(daemon, _link_to(daemon, home / DAEMON_EXECUTABLE))
            installed[DAEMON_EXECUTABLE] = daemon
    elif form == "script":
        installed.update(_script_stubs(root_path, bin_dir, cni_only))
    else:
        raise ValueError(f"unknown install form {form!r} (frozen or script)")
    conflist = under(root_path, conf_dir) / CONFLIST.name
    _write_atomic(conflist, CONFLIST.read_bytes(), 0o644)
    installed["conflist"] = conflist
    if not cni_only:
        installed["unit"] = under(root_path, UNIT_PATH)
        _write_atomic(installed["unit"], UNIT.read_bytes(), 0o644)
        installed["defaults"] = under(root_path, DEFAULTS_PATH)
        if not installed["defaults"].exists():  # the operator's settings live there
            _write_atomic(installed["defaults"], UNIT_DEFAULTS.read_bytes(), 0o644)
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install flannelette: CNI executables, conflist, "
                                                 "flanneletted and its systemd unit.")
    parser.add_argument("--root", default="/", help="install under this root (default /)")
    parser.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    parser.add_argument("--conf-dir", default="/etc/cni/net.d")
    parser.add_argument("--form", choices=("frozen", "script"), default="frozen",
                        help="frozen: the PyInstaller onedir (default); script: python stubs")
    parser.add_argument("--onedir", type=Path, help="install this build instead of building")
    parser.add_argument("--cni-only", action="store_true",
                        help="only the CNI plugin and the conflist (no daemon, no unit)")
    args = parser.parse_args(argv)
    if args.onedir and args.form != "frozen":
        parser.error("--onedir needs --form frozen")
    try:
        installed = install(args.root, args.cni_bin_dir, args.conf_dir, args.form,
                            onedir=args.onedir, cni_only=args.cni_only)
    except (RuntimeError, OSError) as e:
        print(f"install failed: {e}", file=sys.stderr)
        return 1
    for name, path in installed.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
