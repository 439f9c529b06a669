"""``python -m search.cli``: the gradsweep command line."""

from search.cli import entry

entry()
