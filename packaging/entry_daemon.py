"""Entry of the frozen `flanneletted` (packaging/flannelette.spec).

A separate entry rather than daemon/main.py itself, so `daemon.main` is imported under
its own name (as `python -m daemon.main` and the console script do), not as __main__.
"""
import sys

from daemon.main import main

if __name__ == "__main__":
    sys.exit(main())
