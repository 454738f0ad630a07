"""The error a user can fix (bad config, missing data or weights, bad command-line value).

Entry points print it as one line `error: ...` and exit 2; anything else is a bug and keeps its traceback.
It subclasses ValueError so library callers that already catch ValueError keep working.
"""


class UserError(ValueError):
    """A mistake in what the user asked for, reported without a traceback."""
