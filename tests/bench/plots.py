"""Plot helpers for the benchmark report: matplotlib (the `bench` extra), Agg backend.

Imported only inside a benchmark's report(), never by anything that runs on a node.
"""
from __future__ import annotations

import os


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def ecdf(ax, samples_ms: list[float], label: str, **style) -> None:
    """The empirical distribution of `samples_ms`: the share of calls at or under x."""
    xs = sorted(samples_ms)
    if not xs:
        return
    n = len(xs)
    ax.step(xs, [(i + 1) / n for i in range(n)], where="post", label=label, **style)


def save(fig, plots_dir: str, filename: str) -> str:
    """Write `fig` as plots_dir/filename; returns the markdown image path (docs/-relative)."""
    os.makedirs(plots_dir, exist_ok=True)
    fig.savefig(os.path.join(plots_dir, filename), dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return f"benchmarks/{filename}"
