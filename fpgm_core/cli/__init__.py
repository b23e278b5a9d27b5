"""``python -m fpgm_core``: list, prune, slim and evaluate models without the dashboard.

One module per command group (``listing``, ``prune``, ``slim``, ``evaluate``, ``finetune``, ``demo``), each with
a ``register(commands)`` that adds its sub-commands; shared flags live in ``flags``. Every
sub-command sets ``run`` to a function returning its JSON-ready result (printed with ``--json``).

Bad input ends with exit status 2 and one line ``error: …`` naming the problem, never a traceback,
and leaves no output file behind. The engine's warnings (:class:`~fpgm_core.errors.FpgmWarning`)
are printed as ``warning: …`` lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from .._version import __version__
from ..errors import FpgmError, FpgmWarning
from . import demo, evaluate, finetune, listing, prune, slim

__all__ = ["main", "build_parser"]

_COMMAND_GROUPS = (listing, prune, slim, evaluate, finetune, demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fpgm_core``."""
    parser = argparse.ArgumentParser(prog="python -m fpgm_core", description="FPGM filter pruning from the command line.")
    parser.add_argument("--version", action="version", version=f"fpgm_core {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in _COMMAND_GROUPS:
        group.register(commands)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, FpgmWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", FpgmWarning)
        warnings.showwarning = _print_warning
        try:
            result = args.run(args)
        except FpgmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    return 0
