"""The dependency direction of ARCHITECTURE.md, checked statically over the sources.

conf <- ipam <- cni_plugin, conf <- daemon: conf imports nothing of ours, and
neither cni_plugin nor ipam imports an etcd/grpc client or anything of the daemon.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = {"conf", "ipam", "cni_plugin", "daemon", "tests"}
ETCD_CLIENTS = {"pyetcd", "etcd3", "etcd", "grpc", "grpcio"}


def sources(package):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
        for name in filenames:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def imported_modules(path):
    """Every absolute module an import statement names, lazy imports included."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value)


def violations(package, forbidden):
    found = []
    for path in sources(package):
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    return found


def test_conf_imports_nothing_of_ours():
    assert list(sources("conf")), "conf/ has no sources?"
    assert violations("conf", OURS - {"conf"}) == []


@pytest.mark.parametrize("package", ["ipam", "cni_plugin"])
def test_plugins_never_import_etcd_grpc_or_the_daemon(package):
    if not os.path.isdir(os.path.join(ROOT, package)):
        pytest.skip(f"{package}/ does not exist yet")
    assert violations(package, ETCD_CLIENTS | {"daemon", "tests"}) == []


def test_ipam_does_not_import_the_cni_plugin():
    assert violations("ipam", {"cni_plugin"}) == []


def test_the_checker_sees_lazy_and_dotted_imports(tmp_path, monkeypatch):
    """Guard against a checker that would pass everything."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    import pyetcd.client\n    from daemon.x import y\n"
                              "    importlib.import_module('grpc')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", str(tmp_path))
    assert sorted(violations("fakepkg", ETCD_CLIENTS | {"daemon"})) == [
        "fakepkg/m.py imports daemon.x", "fakepkg/m.py imports grpc", "fakepkg/m.py imports pyetcd.client"]
