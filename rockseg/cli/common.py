"""The ``rockseg`` command line's shared parts: the Typer app, the console, the error handling of every command.

A user error (:class:`rockseg.errors.RocksegError`) prints one line on stderr and exits with its code (2 for bad
input, 1 for an incomplete run), without a traceback; ``--debug`` (anywhere on the line) shows the traceback
instead. The commands themselves live in one module each beside this one.

Machine-readable runs: a long command takes ``--json`` (:data:`JsonOption`, a parameter named ``json_out``) and
returns its summary dict; :func:`command` then sends every human line to stderr and prints the summary as one JSON
document on stdout (:func:`json_summary`: the command, what was written, voxels, seconds, rates...), or, when the
command fails, ``{"command": ..., "error": ..., "exit_code": ...}``. Logs stay on stderr.
"""

from __future__ import annotations

import functools
import json
import math
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


JsonOption = Annotated[bool, typer.Option(
    "--json", help="print one JSON summary on stdout (what was written, voxels, seconds, rates); logs stay on stderr")]


def _plain(value: Any) -> Any:
    """``value`` with paths, NumPy scalars, tuples and non-finite floats made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def json_summary(name: str, summary: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """The JSON document of a finished command: ``command``, its summary, and ``voxels``, ``seconds`` and
    ``voxels_per_second`` filled in where the summary gives a shape but not these."""
    doc: dict[str, Any] = {"command": name, "ok": True, **_plain(summary or {})}
    shape = doc.get("shape")
    if "voxels" not in doc and isinstance(shape, list) and shape and all(isinstance(n, int) for n in shape):
        doc["voxels"] = math.prod(shape)
    doc.setdefault("seconds", round(seconds, 3))
    if isinstance(doc.get("voxels"), int) and doc.get("seconds"):
        doc.setdefault("voxels_per_second", doc["voxels"] / doc["seconds"])
    return doc


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a RocksegError into one line on stderr and its exit code (a traceback only with --debug); with
    ``json_out``, print the summary the command returns as one JSON document on stdout, everything else on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("json_out")) and fn.__name__ != "score"  # score prints its own document
        start = time.perf_counter()
        human = out_console._file  # None: whatever sys.stdout is when printing
        if as_json:
            out_console.file = sys.stderr
        try:
            summary = fn(*args, **kwargs)
        except RocksegError as exc:
            if _debug:
                raise
            err_console.print(f"rockseg {fn.__name__}: error: {exc}", markup=False, highlight=False, soft_wrap=True)
            if as_json:
                _print_json({"command": fn.__name__, "ok": False, "error": str(exc), "exit_code": exc.exit_code})
            raise typer.Exit(exc.exit_code) from None
        finally:
            out_console._file = human
        if as_json and summary is not None:  # None: nothing to say (ranks other than 0 under torchrun)
            _print_json(json_summary(fn.__name__, summary, time.perf_counter() - start))
        return summary

    return wrapper


def tune_allocator() -> None:
    """For the commands that allocate large arrays again and again (train, predict, demo, score):
    :func:`rockseg.devices.tune_malloc`, only in the rockseg command's own process, never in a library caller's."""
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

