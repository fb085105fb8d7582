"""One shape for `python -m training|build|server|clients`: `python -m <stage> <command> [options]`.

Each stage's __main__.py is a table of commands; a command's module is imported only when that
command runs (so `python -m build engines` needs no torch, and `python -m clients classify` loads
no benchmark code). How a run ends is decided by the exception's class:

    returns normally          exit status it returns (None = 0)
    UserError                 "error: <first line of the message>" on stderr, exit status 2
    Interrupted, Ctrl-C       its message (or "interrupted") on stderr, exit status 130
    anything else             raises: a bug shows its traceback

Standard library only: `python -m build engines` runs in NVIDIA's TensorRT container with its own Python.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from contract.errors import Interrupted, UserError


@dataclass(frozen=True)
class Command:
    """A subcommand: `run(args)` after `add_arguments(parser)`, each a callable or the name of a
    function in `module` (imported only when this command runs)."""
    help: str
    module: str | None = None
    run: str | Callable = "run"
    add_arguments: str | Callable = "add_arguments"
    description: str | None = None      # default: the module's docstring, else `help`

    def resolve(self) -> tuple[Callable, Callable, str]:
        module = importlib.import_module(self.module) if self.module else None
        pick = lambda f: getattr(module, f) if isinstance(f, str) else f  # noqa: E731
        return pick(self.add_arguments), pick(self.run), self.description or (module and module.__doc__) or self.help


def error_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_guarded(fn: Callable[[], int | None]) -> int:
    """fn()'s exit status; a UserError is one line and 2, an interruption 130, anything else raises."""
    try:
        return int(fn() or 0)
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, UserError):
            print(f"error: {error_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, (KeyboardInterrupt, Interrupted)):
            print(error_line(e) if str(e) else "interrupted", file=sys.stderr)
            return 130
        raise


def main(prog: str, description: str, commands: dict[str, Command], argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        top = argparse.ArgumentParser(prog=prog, description=description,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        top.add_argument("command", choices=list(commands), metavar="command",
                         help="; ".join(f"{name}: {c.help}" for name, c in commands.items()))
        if argv[:1] in (["-h"], ["--help"]):
            top.print_help()
            return 0
        top.parse_args(argv[:1])    # exits 2 with the usage line and the choices
        return 2
    name, rest = argv[0], argv[1:]
    add_arguments, run, doc = commands[name].resolve()
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(rest)
    return run_guarded(lambda: run(args))
