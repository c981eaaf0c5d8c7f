"""The ``edgekit`` command line: a thin layer over the Python API (one module per command)."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from . import __version__, _quiet
from .commands import COMMANDS
from .errors import EdgekitError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgekit", description="Convert, check and run models on edge devices.")
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    _global_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    _command_flags(sub)
    return parser


def _command_flags(sub) -> None:
    """The global flags on every command's parser, nested ones too (``edgekit app vision ... --debug``);
    SUPPRESS keeps a value given before the command."""
    for command in sub.choices.values():
        _global_flags(command, default=argparse.SUPPRESS)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _command_flags(action)


def _global_flags(p: argparse.ArgumentParser, default) -> None:
    """``--debug`` and ``--verbose``, on the main parser and on every command's parser."""
    if "--debug" not in p._option_string_actions:
        p.add_argument("--debug", action="store_true", default=default,
                       help="show the traceback of an error (the exit status stays the same)")
    if "--verbose" not in p._option_string_actions:
        p.add_argument("--verbose", action="store_true", default=default,
                       help="show what the libraries print (runtime banners, warnings, progress bars)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet.set_verbose(args.verbose)
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        _traceback(args)
        sys.stderr.write(f"edgekit: error: {_one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("edgekit: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug or an unexpected library failure
        _traceback(args)
        hint = "" if args.debug else " (run with --debug for details)"
        sys.stderr.write(f"edgekit: error: {type(exc).__name__}: {_one_line(exc)}{hint}\n")
        return 1
    finally:
        _quiet.set_verbose(False)


def _traceback(args) -> None:
    """With --debug, the traceback of the exception being handled, before its one-line message."""
    if args.debug:
        traceback.print_exc(file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
