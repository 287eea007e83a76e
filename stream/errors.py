"""Errors that reach the user as one line on stderr and a non-zero exit code."""


class UserError(Exception):
    """A problem with what the user asked for (a bad path, file, option or endpoint)."""
