"""tests/bench/__main__.py: which benchmarks run, what a run saves, and the page rebuilt from it."""
from __future__ import annotations

import json
import sys
import types

import pytest

from tests.bench import __main__ as bench


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The framework writing under tmp_path, with one fake benchmark and one that is missing."""
    fake = types.ModuleType("flt_fake_bench")
    fake.calls = []

    def measure(quick):
        fake.calls.append(quick)
        return {"quick": quick, "value": 42}

    def report(results, plots_dir):
        return f"## Fake\n\nvalue {results['value']}, quick {results['quick']}"
    fake.measure, fake.report = measure, report
    monkeypatch.setitem(sys.modules, "flt_fake_bench", fake)
    monkeypatch.setattr(bench, "BENCHMARKS", {"fake": ("flt_fake_bench", "a fake"),
                                              "gone": ("tests.bench.bench_flt_missing", "not in this checkout")})
    # The unit tier runs no foreign programs: the machine's description is stubbed.
    monkeypatch.setattr(bench, "machine", lambda: {"cpus": 2, "cpu_model": "test", "memory_gib": 1.0,
                                                   "kernel": "k", "python": "3", "go_plugins": "-",
                                                   "etcd": "-", "iperf3": "-"})
    monkeypatch.setattr(bench, "git_commit", lambda: "abc1234")
    monkeypatch.setattr(bench, "DOC", str(tmp_path / "benchmarks.md"))
    monkeypatch.setattr(bench, "PLOTS", str(tmp_path / "benchmarks"))
    return fake, tmp_path


def test_a_run_saves_results_with_the_machine_and_reports_missing_modules(sandbox):
    fake, tmp = sandbox
    assert bench.main(["--quick"]) == 0
    assert fake.calls == [True]
    saved = json.loads((tmp / "benchmarks" / "results-fake.json").read_text())
    assert saved["results"] == {"quick": True, "value": 42}
    assert saved["meta"]["mode"] == "quick" and saved["meta"]["command"] == "python -m tests.bench --quick"
    assert saved["meta"]["commit"] == "abc1234" and len(saved["meta"]["load_start"]) == 3
    page = (tmp / "benchmarks.md").read_text()
    assert "## Fake\n\nvalue 42, quick True" in page
    assert "## gone\n\nnot run: this checkout has no tests/bench/bench_flt_missing.py" in page


def test_report_only_rebuilds_from_saved_results_without_measuring(sandbox):
    fake, tmp = sandbox
    bench.main(["fake"])
    (tmp / "benchmarks.md").unlink()
    assert bench.main(["--report-only"]) == 0
    assert fake.calls == [False]  # the full run only
    assert "value 42, quick False" in (tmp / "benchmarks.md").read_text()


def test_a_failing_benchmark_keeps_its_saved_results_and_fails_the_run(sandbox, monkeypatch):
    fake, tmp = sandbox
    bench.main(["fake"])

    def broken(quick):
        raise RuntimeError("no netns today")
    monkeypatch.setattr(fake, "measure", broken)
    assert bench.main(["fake"]) == 1
    assert json.loads((tmp / "benchmarks" / "results-fake.json").read_text())["results"]["value"] == 42


def test_an_unknown_name_is_refused(sandbox):
    with pytest.raises(SystemExit):
        bench.main(["nope"])
