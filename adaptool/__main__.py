"""``python -m adaptool``: the command line, as the ``adaptool`` script runs it."""

from adaptool.cli import main

main()
