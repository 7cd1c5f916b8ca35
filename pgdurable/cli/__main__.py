"""`python -m pgdurable.cli` runs the command line (the bench starts its workers this way)."""

from pgdurable.cli import main

main()
