"""`python -m daemon.doctor ...`: the script form's `flannelette doctor`."""
import sys

from daemon.doctor.cli import main

sys.exit(main(sys.argv[1:]))
