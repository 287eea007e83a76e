"""Errors that reach the user as one line on stderr and a non-zero exit code."""


class UserError(Exception):
    """A problem with what the user asked for (a bad path, file, option or endpoint)."""


def first_line(exc: BaseException) -> str:
    """The informative first line of an exception's text, for a one-line error message.

    Skips OpenVINO's 'Exception from src/....cpp:N:' location lines; falls back to the type name.
    """
    lines = [x.strip() for x in str(exc).splitlines()]
    useful = [x for x in lines if x and not x.startswith("Exception from")]
    return useful[0] if useful else type(exc).__name__
