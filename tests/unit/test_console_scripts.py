"""pyproject.toml's console scripts: `flannelette` (what `pip install` puts on PATH) is the lean
shim of the installed executable, so a pip-installed node takes the fast path too.

A real `pip install` into a scratch venv is tests/packaging/test_pip_install.py.
"""
from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAVY = {"pydantic", "pydantic_core", "pyroute2", "conf", "ipam", "daemon", "pyetcd", "grpc"}


def scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def resolve(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_the_flannelette_script_is_the_shims_main():
    from cni_plugin import shim
    assert resolve(scripts()["flannelette"]) is shim.main


@pytest.mark.parametrize("name,expected", [("flannelette-ipam", "ipam.main"), ("flanneletted", "daemon.main")])
def test_the_other_scripts_resolve_to_their_mains(name, expected):
    assert resolve(scripts()[name]) is importlib.import_module(expected).main


def test_importing_the_flannelette_entry_loads_no_pydantic():
    """As pip's wrapper does it: a plain interpreter (site on), then `from module import attr`."""
    module, _, attr = scripts()["flannelette"].partition(":")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import {attr}; "
            "print('\\n'.join(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "cni_plugin.shim" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
