"""The one exception type the CLI turns into a single line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix: ``str()`` is the one line to print (key or value, allowed)."""
