"""The one exception type that means "the user asked for something we cannot do".

The CLI prints these as a single ``error: ...`` line and exits non-zero without a
traceback; anything else escaping is a bug and keeps its traceback.
"""


class DahpError(Exception):
    """A user-facing error: bad input, bad file, impossible request."""
