"""`python -m tests.bench` (`make bench`): run the benchmarks and print their figures."""
import sys

from tests.bench.bench_plugin import main

sys.exit(main())
