"""User-facing errors print as one message, not a traceback: the project's commands end a bad input (a wrong config
value, a missing or damaged file, a used run directory) with ``<command>: error: <message>`` and exit status 1.

``--debug`` on the command line, or the environment variable ``WKD_DEBUG=1``, shows the full traceback instead.
Errors of other types (bugs, crashes) keep their traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

#: The types the project raises for bad inputs (every message says what is wrong and what to do).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    ConnectionError,
    PermissionError,
    IsADirectoryError,
    FloatingPointError,  # a diverged run (non-finite loss), with advice on what to lower
)
#: Set (to 1) for the traceback of a user-facing error; ``--debug`` sets it for the processes a command starts.
DEBUG_VARIABLE = "WKD_DEBUG"


def take_debug_flag() -> bool:
    """Remove ``--debug`` from ``sys.argv`` (the parsers do not know it) and say whether tracebacks are wanted.

    The flag is turned into ``WKD_DEBUG=1`` because DDP ranks run the command line again, and inherit the environment.
    """
    if "--debug" in sys.argv[1:]:
        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--debug")]
        os.environ[DEBUG_VARIABLE] = "1"
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextlib.contextmanager
def user_errors_as_messages() -> Iterator[None]:
    """Turn a :data:`USER_ERRORS` exception into ``<command>: error: <message>`` and exit status 1."""
    debug = take_debug_flag()
    try:
        yield
    except USER_ERRORS as error:
        if debug:
            raise
        name = os.path.basename(sys.argv[0]) or "wkd"
        print(f"{name}: error: {error}\n(for the traceback: add --debug, or set {DEBUG_VARIABLE}=1)", file=sys.stderr)
        sys.exit(1)
