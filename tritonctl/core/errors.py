"""The exceptions tritonctl raises on purpose: each message says what is wrong and what to do.

The CLI turns any of them into one red line and the exit code below; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TritonctlError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 1


class BadInput(TritonctlError):
    """A flag, file or path the user gave cannot be used."""

    exit_code = 2


class ToolMissing(TritonctlError):
    """A program or package we need (docker, trtexec, perf_analyzer, the local runtime) is not available."""

    exit_code = 3


class ServerError(TritonctlError):
    """The Triton server cannot be started, reached, or does not become ready."""

    exit_code = 4


class ModelError(TritonctlError):
    """A model fails to load, is unknown to the server, or is not a detection model we can decode."""

    exit_code = 5


class ToleranceExceeded(TritonctlError):
    """A check ran and its result broke the tolerance the user set (e.g. FP16 parity)."""

    exit_code = 6


class EventsUndelivered(TritonctlError):
    """A broker sink (--sink) delivered nothing, or dropped or lost messages: the run's results are not all there."""

    exit_code = 7
