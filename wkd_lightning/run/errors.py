"""User-facing errors print as one message, not a traceback: the project's commands end a bad input (a wrong config
value, a missing or damaged file, a used run directory) with ``<command>: error: <message>`` and exit status 1.

``--debug`` on the command line, or the environment variable ``WKD_DEBUG=1``, shows the full traceback instead.
Errors of other types (bugs, crashes) keep their traceback.

:func:`run_command` is how the training commands (``wkd``, ``wkd-det``, ``wkd-ban``) end: these messages, the exit
status of a stop by signal, and one explanation of a collective that lost a peer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator

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


def command_name() -> str:
    """The name the user typed the command by (``wkd``, ``wkd-ban``, ...)."""
    return os.path.basename(sys.argv[0]) or "wkd"


@contextlib.contextmanager
def user_errors_as_messages(name: str | None = None) -> Iterator[None]:
    """Turn a :data:`USER_ERRORS` exception into ``<name>: error: <message>`` and exit status 1.

    Args:
        name: the command in the message; default: the one typed (``sys.argv[0]``).
    """
    debug = take_debug_flag()
    try:
        yield
    except BrokenPipeError:  # the reader of the output went away (`wkd models | head`): nothing to tell anyone
        # Python's advice: point stdout at /dev/null, so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except USER_ERRORS as error:
        if debug:
            raise
        name = name or command_name()
        message = root_cause(error)
        print(f"{name}: error: {message}\n(for the traceback: add --debug, or set {DEBUG_VARIABLE}=1)", file=sys.stderr)
        sys.exit(1)


def root_cause(error: BaseException) -> BaseException:
    """The error to show for ``error``: past the errors jsonargparse raised ``from`` a bad-input error.

    jsonargparse re-raises the error of a class it failed to build (a loss that refused its cost file) as "Does not
    validate against any of the Union subtypes", with the config it tried; the project's own message, which says
    what is wrong and what to do, is the cause it was raised from. Errors raised elsewhere are shown as they are.
    """
    while isinstance(error.__cause__, USER_ERRORS) and raised_by_jsonargparse(error):
        error = error.__cause__
    return error


def raised_by_jsonargparse(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is jsonargparse's code."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and f"{os.sep}jsonargparse{os.sep}" in frame.tb_frame.f_code.co_filename


def run_command(body: Callable[[], object], name: str | None = None) -> None:
    """Run a command's ``body`` and end the process as every training command of the project ends.

    * A bad input (:data:`USER_ERRORS`) ends with ``<name>: error: <message>`` and exit status 1
      (:func:`user_errors_as_messages`; ``--debug`` shows the traceback).
    * A run stopped by SIGTERM exits with status 143 (128 + 15, the shell convention; Ctrl-C: 130), not Lightning's
      0, so that job schedulers and scripts can tell an interrupted run from a finished one.
    * A collective that failed because another rank died or hung ends with one message that says so
      (:func:`~wkd_lightning.run.distributed.explain_collective_failure`).
    * A finished run destroys its process group before the interpreter exits.

    Args:
        body: the command (parses its own arguments from ``sys.argv``); its return value is ignored, so the shell
            sees exit status 0.
        name: the command in messages; default: the one typed (``sys.argv[0]``).
    """
    # Imported here: this module is imported by light commands too, and these pull in Lightning and torch.distributed.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from wkd_lightning.run.distributed import end_process_group, explain_collective_failure

    with user_errors_as_messages(name):
        try:
            body()
            end_process_group()
        except SIGTERMException as stop:  # RunInterrupted carries the signal (Ctrl-C: 130); Lightning's: SIGTERM
            sys.exit(128 + getattr(stop, "signum", signal.SIGTERM))
        except RuntimeError as error:
            explanation = explain_collective_failure(error)
            if explanation is None:
                raise
            raise SystemExit(f"{name or command_name()}: {explanation}") from error
