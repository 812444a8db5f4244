"""`python -m tests.bench` (`make bench`): run the benchmarks and print their figures.

    python -m tests.bench                      every benchmark with its defaults
    python -m tests.bench plugin [--n 200 ...]  one benchmark with its own options
"""
import importlib
import sys

BENCHMARKS = {
    "plugin": "tests.bench.bench_plugin",            # CNI ADD/DEL latency vs bridge + host-local
    "daemon-join": "tests.bench.bench_daemon_join",  # flanneletted joining many leases
    "backend-join": "tests.bench.bench_join",        # the vxlan backend alone programming many leases
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in BENCHMARKS:
        names, rest = [argv[0]], argv[1:]
    elif argv and argv[0].startswith("-"):  # options alone: the plugin benchmark's
        names, rest = ["plugin"], argv
    elif argv:
        print(f"unknown benchmark {argv[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    else:
        names, rest = list(BENCHMARKS), []
    status = 0
    for name in names:
        print(f"## benchmark {name}", flush=True)
        status |= importlib.import_module(BENCHMARKS[name]).main(rest) or 0
    return status


sys.exit(main(sys.argv[1:]))
