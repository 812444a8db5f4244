"""Install the CNI executables and the shipped conflist on a node (or under any root, for tests).

    .venv/bin/python packaging/install.py [--root /] [--cni-bin-dir /opt/cni/bin]
                                          [--conf-dir /etc/cni/net.d] [--form frozen|script]

frozen (default): the PyInstaller onedir (built or taken from the build cache) is copied
to <root>/opt/flannelette/; <cni-bin-dir>/flannelette becomes a relative symlink to its lean
shim and flannelette-ipam one to flannelette-full. Runtimes exec symlinks like any file,
and the bootloader finds its libraries through the resolved path.
script: small `#!<this python> -IS` stubs that import the shim from this checkout
(development machines; no PyInstaller needed).
The conflist goes to <conf-dir>/10-flannelette.conflist. Every file is replaced atomically,
so a runtime never execs a half-written plugin.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path


def load_script(name: str):
    """A script of this directory as a module (packaging/ is no package: the name would
    shadow PyPI's `packaging`, and `build` is a PyPI name too)."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"flannelette_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = sys.modules.get("flannelette_build") or load_script("build")

REPO = build.REPO
CONFLIST = REPO / "conf" / "shipped" / "10-flannelette.conflist"
EXECUTABLES = ("flannelette", "flannelette-ipam")
ONEDIR_HOME = "opt/flannelette"

STUB = """#!{python} -IS
# flannelette CNI plugin (script form): the lean shim from {repo}
import sys
sys.path[:0] = {paths!r}
from cni_plugin.shim import main
main()
"""


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _replace_symlink(link: Path, target: str) -> None:
    staging = link.with_name(f".{link.name}.new")
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    os.symlink(target, staging)
    os.replace(staging, link)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(data)
    os.chmod(staging, mode)
    os.replace(staging, path)


def install_onedir(root: Path, onedir: Path, link: bool) -> Path:
    """<root>/opt/flannelette holding the onedir (a copy; a symlink to the build with `link`)."""
    home = under(root, ONEDIR_HOME)
    home.parent.mkdir(parents=True, exist_ok=True)
    if link:
        _replace_symlink(home, str(onedir))
        return home
    staging = home.with_name(home.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(onedir, staging, symlinks=True)
    if home.is_symlink() or home.is_file():
        home.unlink()
    if home.exists():
        old = home.with_name(home.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(home, old)
        os.rename(staging, home)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, home)
    return home


def install(root: str = "/", cni_bin_dir: str = "/opt/cni/bin", conf_dir: str = "/etc/cni/net.d",
            form: str = "frozen", link: bool = False, onedir: Path | None = None) -> dict[str, Path]:
    """Install and return {name: installed path} for the executables and the conflist."""
    root_path = Path(root)
    bin_dir = under(root_path, cni_bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    installed: dict[str, Path] = {}
    if form == "frozen":
        home = install_onedir(root_path, onedir or build.build(), link)
        targets = {"flannelette": build.EXECUTABLE, "flannelette-ipam": build.FULL_EXECUTABLE}
        for name in EXECUTABLES:
            _replace_symlink(bin_dir / name, os.path.relpath(home / targets[name], bin_dir))
            installed[name] = bin_dir / name
    elif form == "script":
        paths = [str(REPO), sysconfig.get_paths()["purelib"]]
        stub = STUB.format(python=sys.executable, repo=REPO, paths=paths).encode()
        for name in EXECUTABLES:
            _write_atomic(bin_dir / name, stub, 0o755)
            installed[name] = bin_dir / name
    else:
        raise ValueError(f"unknown install form {form!r} (frozen or script)")
    conf_path = under(root_path, conf_dir)
    conf_path.mkdir(parents=True, exist_ok=True)
    _write_atomic(conf_path / CONFLIST.name, CONFLIST.read_bytes(), 0o644)
    installed["conflist"] = conf_path / CONFLIST.name
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install flannelette's CNI executables and conflist.")
    parser.add_argument("--root", default="/", help="install under this root (default /)")
    parser.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    parser.add_argument("--conf-dir", default="/etc/cni/net.d")
    parser.add_argument("--form", choices=("frozen", "script"), default="frozen",
                        help="frozen: the PyInstaller onedir (default); script: python stubs")
    args = parser.parse_args(argv)
    try:
        installed = install(args.root, args.cni_bin_dir, args.conf_dir, args.form)
    except (RuntimeError, OSError) as e:
        print(f"install failed: {e}", file=sys.stderr)
        return 1
    for name, path in installed.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
