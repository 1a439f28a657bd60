"""Errors caused by the user's input: reported as one line, with a non-zero exit, no traceback."""


class UserError(Exception):
    """Bad configuration or data; the message names the problem and the offending value or path."""
