"""`python -m cgthub.cli` runs the `cgthub` command."""

from cgthub.cli import main

main()
