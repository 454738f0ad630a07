"""The error a user can fix (bad config, missing data or weights, bad command-line value).

Entry points print it as one line `error: ...` and exit 2; anything else is a bug and keeps its traceback.
It subclasses ValueError so library callers that already catch ValueError keep working.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

# Either of these turns the one-line report back into the full traceback (the exception propagates,
# so `python -m pdb` can stop at it).
DEBUG_FLAG = "--debug"
DEBUG_ENV = "S4V_DEBUG"
USER_ERROR_EXIT = 2  # what argparse uses for a bad command line: the same kind of mistake


class UserError(ValueError):
    """A mistake in what the user asked for, reported without a traceback."""


def one_line(message: str) -> str:
    """Multi-line messages (e.g. a list of mismatched checkpoint keys) joined so stderr gets one line."""
    head, *rest = [line.strip() for line in message.strip().splitlines() if line.strip()] or [""]
    if not rest:
        return head
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest)


def entry_point(main: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command-line main: a UserError becomes `error: <message>` on stderr and exit code 2.

    `--debug` is taken out of the arguments wherever it stands, so every sub-command behind a
    dispatcher accepts it without declaring it; with it (or S4V_DEBUG=1) the UserError propagates.
    """

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            return main([a for a in args if a != DEBUG_FLAG])
        except UserError as e:
            if debug:
                raise
            print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
            return USER_ERROR_EXIT

    return run
