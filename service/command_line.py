"""What every command line of the project shares (mnist-models, mnist-store, mnist-serve,
mnist-train): a parser whose usage errors are one line, argparse types that refuse NaN,
infinities and out-of-range numbers at parse time, and a quiet ending for a closed standard
output.

Hand-written: argparse has no range checking, and the few lines here are simpler than a
dependency would be.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence

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
        too_low = value <= lowest if low_open else value < lowest
        if not math.isfinite(value) or too_low or value > highest:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


def whole_number(lowest: int, highest: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lowest, highest]."""
    expected = f"an integer >= {lowest}" + ("" if highest is None else f" and <= {highest}")

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if value < lowest or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
        return value

    convert.__name__ = "integer"
    return convert


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
    # Python flushes stdout again at exit and would print "Exception ignored ... BrokenPipeError"
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass
    return EXIT_BROKEN_PIPE


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
