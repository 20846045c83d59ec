"""The ``mlsv`` command line: one subcommand per module in ``mlsv.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from mlsv import __version__
from mlsv.commands.options import silence_progress

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
COMMANDS = (
    "train",
    "prepare",
    "embed",
    "score",
    "calibrate",
    "evaluate",
    "verify",
    "identify",
    "export",
    "inspect",
    "push",
    "demo",
)
QUIET_HELP = "no progress bars or library messages (transformers' 'Loading weights', ...): results and errors only"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlsv",
        description="Multi-layer speaker verification: train, prepare data, embed, score, calibrate, evaluate, "
        "verify, identify, export, inspect and publish models. `mlsv train` is `python train.py` (also for "
        "`accelerate launch train.py`); `mlsv push` is `python push_to_hub.py`.",
    )
    parser.add_argument("--version", action="version", version=f"mlsv {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mlsv.commands.{name}").register(sub)
    for command in sub.choices.values():  # also after the command; SUPPRESS keeps a --quiet given before it
        _add_quiet(command)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` on a command's parser and on its own sub-commands' (``mlsv prepare noise ... -q``)."""
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_quiet(child)


def _printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not UTF-8 (held as surrogates) written as ``\\xNN``: the
    same rule as ``mlsv.data.audio.printable``, here so that the parser imports no numpy."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "forward_arguments", False):  # train, push: their own parser takes the rest as it is
        return int(args.func(extra) or 0)
    # a command whose last positional takes several values (``mlsv verify E1 E2 --json T``) gets the values
    # that follow an option: argparse matches a positional once, before the first option
    field = getattr(args, "more_positionals", None)
    if extra and field is not None:
        # after a "--" every value is positional, even one that starts with "-"
        before, after = (extra[: extra.index("--")], extra[extra.index("--") + 1 :]) if "--" in extra else (extra, [])
        if any(e.startswith("-") for e in before):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        values = getattr(args, field)
        values.extend(map(type(values[0]), before + after) if values else before + after)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.quiet:
        silence_progress()
    try:
        rc = args.func(args)
    # FileNotFoundError, IsADirectoryError, ... are OSErrors; an ImportError names the extra to install
    except (OSError, KeyError, ValueError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mlsv {args.command}: error: {_printable(str(msg))}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
