import sys

from bench.run import cli

sys.exit(cli())
