"""The per-frame vocabulary of a stream: a decoded `Frame`, its `Result` once inferred (or `Unfinished` when the run
stopped first), the `FrameStage` protocol every per-frame step follows (tracking, zones, a crop embedder), and the
`Sink` protocol every output follows. Low in the package, so sources, stages, outputs and the run all speak it
without importing each other.

A frame's way through the run: a reader makes a `Frame`; an inference worker makes its `Result`, and the run's
worker-side stages process it there (in parallel, in no set order); the emitter puts results back in order and
passes each through the ordered stages (tracking, then zones), then every sink.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tritonctl.vision.detections import Detections


@dataclass
class Frame:
    source: int
    index: int  # frame number in its source (before --vid-stride)
    image: np.ndarray
    timestamp: float  # seconds into the source (files) or wall clock (live)
    read_at: float  # perf_counter when decoded
    decode_s: float
    path: Path | None = None  # the image file, for image sources (a folder or glob names many)


@dataclass(frozen=True)
class TrackSpan:
    """A track that has ended: its id and the first and last frame (0-based update counts) it was returned on."""

    track_id: int
    first_frame: int
    last_frame: int


class FrameGeometry(Protocol):
    """One frame's zones and lines, as the sinks read them (zones.GeometryState)."""

    def to_json(self, names: Mapping[int, str]) -> dict[str, Any]: ...

    def zones_of(self, index: int) -> list[str]: ...


@dataclass
class Result:
    seq: int
    frame: Frame
    detections: Detections
    timings: dict[str, float]
    endpoint: str = ""
    ended_tracks: list[TrackSpan] = field(default_factory=list)  # tracks of this source that ended by this frame
    geometry: FrameGeometry | None = None  # its source's zones and lines at this frame (pipeline file)


@dataclass
class Unfinished:
    """A numbered frame that was not inferred: the run stopped while its request waited for a server."""

    seq: int
    frame: Frame


class Labels(Protocol):
    """What a sink needs of the model: its name and its class names (inference.client.ModelInfo is one)."""

    @property
    def name(self) -> str: ...

    @property
    def names(self) -> dict[int, str]: ...


class Sink(Protocol):
    """An output. write() is called from one thread (the emitter), in frame order, for each inferred frame; close()
    finishes its files on any ending; written() names them; discard() drops what it started when the run fails
    before its first frame (no empty file replaces an existing one)."""

    def write(self, result: Result, info: Labels) -> None: ...

    def written(self) -> list[tuple[Path, int]]: ...  # (file or image folder, frames in it)

    def close(self) -> None: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class StageFigures:
    """What a stage reports of its work so far. Each stage returns its own subclass (tracking: tracks per source;
    zones: counts per source), read by type, never by string keys."""

    stage: str


class FrameStage(Protocol):
    """One per-frame step of the run. Worker-side stages run in the inference threads, several at once, on results in
    no set order (they must be thread-safe and keep no order-dependent state); ordered stages run on the emitter's
    thread, one result at a time, each source's in frame order, before the sinks. A stage keeps its per-source state
    itself, from `source_added` to `source_ended`."""

    name: str

    def process(self, result: Result) -> None:
        """Work on one result in place: replace or extend its detections (e.g. `data` arrays), fill its fields."""
        ...

    def source_added(self, source: int) -> None:
        """A source joined the run (at its start, or a reloaded pipeline file): make its state."""
        ...

    def source_ended(self, source: int) -> list[TrackSpan]:
        """A source's last frame went through: release its state, returning what ends with it (tracks still alive)."""
        ...

    def figures(self) -> StageFigures:
        """Its figures so far; called from other threads (the live view's) between two frames."""
        ...
