"""The ``rockseg`` command line's shared parts: the Typer app, the console, the error handling of every command.

A user error (:class:`rockseg.errors.RocksegError`) prints one line on stderr and exits with its code (2 for bad
input, 1 for an incomplete run), without a traceback; ``--debug`` (anywhere on the line) shows the traceback
instead. The commands themselves live in one module each beside this one.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from rockseg import __version__
from rockseg.errors import RocksegError

app = typer.Typer(
    name="rockseg", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Segment X-ray micro-CT volumes of rocks with UNet networks, and score them by IoU and physics.\n\n"
    "Pipeline: convert -> tile -> train -> predict -> stitch -> score (or all at once: rockseg demo).",
)
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True)
_debug = False
_own_process = False  # set by main(): the process is the rockseg command, so it may tune the allocator


def log(line: str) -> None:
    """One timestamped log line on stderr (used when stderr is not a terminal: cron, Slurm)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a RocksegError into one line on stderr and its exit code (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RocksegError as exc:
            if _debug:
                raise
            err_console.print(f"rockseg {fn.__name__}: error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def tune_allocator() -> None:
    """For the commands that run a network (train, predict, demo): :func:`rockseg.devices.tune_malloc`, only in
    the rockseg command's own process, never in a library caller's."""
    if _own_process:
        from rockseg.devices import tune_malloc

        tune_malloc()


def _version(value: bool) -> None:
    if value:
        out_console.print(f"rockseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Segment X-ray micro-CT volumes of rocks with UNet networks, and score them by IoU and physics."""


def main() -> None:
    """Console entry point: ``--debug`` anywhere on the line shows tracebacks."""
    global _debug, _own_process
    _own_process = True
    if "--debug" in sys.argv[1:]:
        _debug = True
        sys.argv.remove("--debug")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("rockseg: interrupted")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, exit 1; --debug shows where
        if _debug:
            raise
        err_console.print(
            f"rockseg: error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        sys.exit(1)

