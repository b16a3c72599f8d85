"""The command line's frame: the Typer app, one red line and an exit code per error, broken pipes, the entry point.

Heavy libraries (ultralytics, torch, onnxruntime, cv2, docker, tritonclient) are imported inside the commands,
so that `tritonctl --help` stays instant.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from tritonctl.core.errors import TritonctlError
from tritonctl.core.ui import console

app = typer.Typer(
    help="From a YOLO checkpoint to real-time object detection on NVIDIA Triton Inference Server.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = console(stderr=True)
out = console()
F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Our own errors become one red line and their exit code; Ctrl-C exits 130 without a traceback; a reader that
    closes our output (`| head -1`) ends the command quietly, as it ends any Unix tool."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return _reported(fn, *args, **kwargs)
            finally:
                sys.stdout.flush()  # what print() buffered (`status --json`) fails here, not at interpreter exit
        except BrokenPipeError:  # also when the red line itself cannot be written: stderr is the same pipe (2>&1)
            _silence_output()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None

    return wrapper  # type: ignore[return-value]


def _reported(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TritonctlError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


# What a shell reports for a writer killed by SIGPIPE (`yes | head -1`); Python ignores SIGPIPE and raises instead.


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null: what is still buffered for the closed pipe would otherwise fail again
    when the interpreter flushes at exit ("Exception ignored … BrokenPipeError", exit 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stream already closed or detached
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Output that is only a report of work already done: a reader that leaves (`| grep -m1 ready`) changes nothing."""
    try:
        yield
    except BrokenPipeError:
        _silence_output()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from tritonctl import __version__

        try:
            installed = version("tritonctl")
        except PackageNotFoundError:  # run from a checkout without installing
            installed = __version__
        print(f"tritonctl {installed}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit"),
) -> None:
    """From a YOLO checkpoint to real-time object detection on NVIDIA Triton Inference Server."""


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from tritonctl.core.errors import BadInput

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"{flag} {text!r}: give whole numbers separated by commas, e.g. 4,8") from None
    return values


def main(args: list[str] | None = None) -> None:
    """The entry point (`tritonctl`, `python -m tritonctl.cli`). Typer runs without its own error handling, whose usage
    errors are a 4-5 line box: here they are one line, as every other error is."""
    click_error, usage_error = _click_errors()
    _broken_pipes_raise()
    try:
        code = app(args=args, prog_name="tritonctl", standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            _error_line(_one_line(exc), f" (see {_command_path(exc)} --help)")
        sys.exit(2)
    except click_error as exc:
        _error_line(_one_line(exc))
        sys.exit(int(getattr(exc, "exit_code", 1)))
    sys.exit(code if isinstance(code, int) else 0)  # without standalone mode, typer returns what ended the command


def _broken_pipes_raise() -> None:
    """Rich answers a closed pipe by exiting 1 on the spot (`Console.on_broken_pipe`, the hook it documents for
    overriding): that would skip `serve`'s rule that a recorded detached server outlives its output, and `command`'s
    exit code. Here its consoles raise BrokenPipeError instead, which those two handle."""
    from rich.console import Console

    def on_broken_pipe(console: Console) -> None:
        console.quiet = True  # whatever else it is asked to print goes nowhere
        raise BrokenPipeError(errno.EPIPE, "the reader of our output went away")

    setattr(Console, "on_broken_pipe", on_broken_pipe)  # noqa: B010  (mypy refuses assigning to a method)


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, UsageError): typer 0.29 vendors click as `typer._click` and exports neither; older typer
    releases (pyproject allows 0.12+) use click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions  # type: ignore[no-redef]
    return exceptions.ClickException, exceptions.UsageError


def _one_line(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    return " ".join(str(format_message() if format_message else exc).split())


def _command_path(exc: Exception) -> str:
    """`tritonctl detect`: the command as the user typed it, also under `python -m tritonctl.cli`."""
    names: list[str] = []
    ctx = getattr(exc, "ctx", None)
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(["tritonctl", *names])


def _error_line(message: str, hint: str = "") -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True)
