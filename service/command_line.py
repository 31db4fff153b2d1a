"""What every command line of the project shares (mnist-models, mnist-store, mnist-serve,
mnist-train): a parser whose usage errors are one line, argparse types that refuse NaN,
infinities and out-of-range numbers at parse time, and a quiet ending for a closed standard
output.

A reader that goes away (``| head``, ``| true``) stops a command at its next write, as it stops
Unix tools, with EXIT_BROKEN_PIPE; a command that changes something (publishes, promotes,
deletes) also stops *before* the change when the reader of its stdout or stderr is gone
(``stop_if_output_closed``), so that 141 always means "nothing was changed". Once the change is
made, a closed output no longer changes the exit code: what is written after it goes through
``say``, which drops lines nobody can read.

Hand-written: argparse has no range checking, and the few lines here are simpler than a
dependency would be.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import io
import math
import os
import select
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: the exit code of a command whose standard output was closed early (``... | head -1``), as a
#: shell reports a process ended by SIGPIPE (128 + 13)
EXIT_BROKEN_PIPE = 141

#: ``main(argv=None) -> exit code``
EntryPoint = typing.TypeVar("EntryPoint", bound=Callable[..., int])


def number_in(
    lowest: float,
    highest: float = math.inf,
    *,
    low_open: bool = False,
    what: str = "a number",
) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in [lowest, highest] (``low_open``: > lowest).

    NaN and infinities are refused (a NaN compares false with every bound, so it would pass a
    plain ``value < lowest`` check); argparse turns the ValueError into ``error: argument
    --flag: ...``, exit 2.
    """
    low = f"> {lowest:g}" if low_open else f">= {lowest:g}"
    expected = f"{what} {low}" + ("" if math.isinf(highest) else f" and <= {highest:g}")

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ({expected})")
        too_low = value <= lowest if low_open else value < lowest
        if too_low or value > highest:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


#: digits an integer setting or flag may have: under the 4,300 past which int() refuses with
#: advice meant for Python programmers (a longer number is out of every range here anyway)
MAX_INTEGER_DIGITS = 4000


def integer_text(text: str) -> int:
    """The integer written in ``text`` as people write one: ASCII digits, with a leading "-" for
    a negative number. ValueError for anything else that ``int()`` would take (``1_000``,
    ``+3``, ``٣``, inner spaces) and for more than MAX_INTEGER_DIGITS digits."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_INTEGER_DIGITS:
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def whole_number(lowest: int, highest: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lowest, highest]."""
    expected = f"an integer >= {lowest}" + ("" if highest is None else f" and <= {highest}")

    def convert(text: str) -> int:
        try:
            value = integer_text(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if value < lowest or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    convert.__name__ = "integer"
    return convert


def folder_path(text: str) -> Path:
    """An argparse ``type``: a path that is not empty. ``Path("")`` is the current folder, which
    an unset variable (``--models-dir "$DIR"``) should not quietly mean."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected a folder, got an empty value (write . for the current folder)"
        )
    return Path(text)


def quiet_on_closed_output(main: EntryPoint) -> EntryPoint:
    """``main`` (an entry point: argv in, exit code out) ending quietly, with EXIT_BROKEN_PIPE,
    when the reader of its standard output goes away (``mnist-models list | head -1``), as Unix
    tools do, instead of a traceback or an error line. ``main`` must let BrokenPipeError through.
    """

    @functools.wraps(main)
    def entry(argv: Sequence[str] | None = None) -> int:
        try:
            try:
                code = main(argv)
            except SystemExit:  # argparse's --help and usage errors
                sys.stdout.flush()
                raise
            sys.stdout.flush()  # what is still buffered may meet the closed pipe only now
        except BrokenPipeError:
            return _closed_output()
        return code

    return typing.cast(EntryPoint, entry)


def _closed_output() -> int:
    _drop_output(sys.stdout)
    return EXIT_BROKEN_PIPE


def _drop_output(stream: typing.TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null: Python flushes it again at exit and would
    print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # a stream without a file descriptor (a test's capture)


def reader_gone(stream: typing.TextIO) -> bool:
    """True when ``stream`` is a pipe, socket or terminal whose reader has gone away (poll(2)
    reports an error or a hang-up on it); False for files, captures and live readers."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def stop_if_output_closed(*streams: typing.TextIO) -> None:
    """BrokenPipeError when the reader of any of ``streams`` (default: stdout and stderr) is gone.

    Called just before a command changes something, so that a reader that went away while
    nothing was written yet (``mnist-train --progress none | true``) stops the command as a
    write would have, with nothing changed, rather than turning the change into a failure code
    when the report of it is written.
    """
    for stream in streams or (sys.stdout, sys.stderr):
        if reader_gone(stream):
            raise BrokenPipeError(errno.EPIPE, f"the reader of {_name(stream)} went away")


def _name(stream: typing.TextIO) -> str:
    if stream is sys.stdout:
        return "standard output"
    if stream is sys.stderr:
        return "standard error"
    return str(getattr(stream, "name", "the output"))


@contextlib.contextmanager
def after_the_change() -> Iterator[None]:
    """A block that reports a change already made: a reader that went away ends the block (what
    is left unwritten is dropped) instead of turning the change into EXIT_BROKEN_PIPE."""
    try:
        yield
    except BrokenPipeError:
        for stream in (sys.stdout, sys.stderr):
            _drop_output(stream)


def say(*parts: object, file: typing.TextIO | None = None) -> None:
    """``print(*parts, file=file, flush=True)`` for what a command writes once its change is made:
    a reader that went away does not turn the change into a failure, the line is dropped (and
    so is the rest written to that stream)."""
    stream = sys.stdout if file is None else file
    try:
        print(*parts, file=stream, flush=True)
    except BrokenPipeError:
        _drop_output(stream)
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # what is still buffered now goes to /dev/null


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag (not the whole usage block)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the flags)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse checks required flags before it reports unknown ones; an unknown flag is the
        first thing to name (``--bogus`` is not "--out is required"), so look for those first."""
        required = [action for action in self._actions if action.required]
        if required:
            for action in required:
                action.required = False
            try:
                _, unknown = super().parse_known_args(args, argparse.Namespace())
            finally:
                for action in required:
                    action.required = True
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_known_args(args, namespace)
