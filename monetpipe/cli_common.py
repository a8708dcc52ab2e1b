"""Shared command-line plumbing: logging set-up and turning user errors into one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable

from monetpipe.errors import MonetError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


INTERRUPTED = "interrupted; finished work is kept: re-run the same command to resume"


def run_cli(body: Callable[[], int | None], interrupted: str = INTERRUPTED) -> int:
    """Run a command body; a :class:`MonetError` prints its message (no traceback) and exits 1.

    Ctrl-C prints ``interrupted`` (what was kept and how to resume; a command with its own way to
    resume, such as ``monet_train --continue``, passes its own) and exits 130.
    """
    try:
        code = body()
    except MonetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return int(code or 0)


def command_parser(
    prog: str, description: str, examples: str, formatter: type[argparse.HelpFormatter] | None = None
) -> argparse.ArgumentParser:
    """A command's parser: its description wrapped, and ``--help`` ending with ``examples`` as written.

    Args:
        examples: the epilog, starting with ``examples:``; its line layout is kept.
        formatter: a :class:`argparse.RawDescriptionHelpFormatter` subclass (default: that class).
    """
    return argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(description, 100),
        epilog=examples,
        formatter_class=formatter or argparse.RawDescriptionHelpFormatter,
    )
