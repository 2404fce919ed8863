"""Exit statuses shared by every command: 0 done, 2 a user error (one `error: ...` line),
130 / 143 interrupted (Ctrl-C / SIGTERM), 1 a bug (with its traceback).

    def main(argv=None) -> None: ...               raise UserError (or a subclass) for bad input
    if __name__ == '__main__':
        sys.exit(run_command(main))

This module imports nothing heavy, so worker processes and torch-free tools can use it.
"""
import signal
import sys
from typing import Any, Callable, Optional, Sequence

INTERRUPTED = 130           # 128 + SIGINT, as a shell reports Ctrl-C
TERMINATED = 128 + signal.SIGTERM


class UserError(Exception):
    """An input, option or environment the command cannot work with; the message says why."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that cleanup runs as for Ctrl-C."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f'terminated by signal {signum}')


def handle_termination() -> None:
    """Make SIGTERM raise Interrupted in the main thread (temporary files are then removed by the
    code that created them, as on Ctrl-C)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


def ignore_interrupts() -> None:
    """Initializer of worker processes: Ctrl-C and SIGTERM are handled by the parent, which stops
    the pool; a worker finishes or is cancelled silently instead of printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def fail(message: str, status: int = 2) -> int:
    """Print one `error: ...` line (the first line of `message` carries the problem) and return
    `status`."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    return status


def describe_os_error(error: OSError) -> str:
    """An OSError as 'FILE: reason', the way the other errors name their file."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        return f'{error.filename}: {reason}'
    return reason


def run_command(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Call main(argv) and turn its outcome into an exit status (see the module docstring).

    UserError and OSError (unreadable or unwritable files, a full disk) are user errors;
    argparse's own exit (status 2 on misuse) passes through unchanged."""
    handle_termination()
    try:
        main(argv)
    except Interrupted:
        return fail('terminated (SIGTERM); no partly written file was left behind', TERMINATED)
    except KeyboardInterrupt:
        return fail('interrupted; no partly written file was left behind', INTERRUPTED)
    except UserError as e:
        return fail(str(e))
    except OSError as e:
        return fail(describe_os_error(e))
    return 0
