#!/usr/bin/python3
"""A fake IP camera for tests and benchmarks: GStreamer's RTSP server replaying pre-encoded H.264 files, looped forever.

Run it with Debian's python (`/usr/bin/python3`, which has `gi`), not the project's venv:

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --media cam0=cam.h264 --media cam1=cam.h264

Each `--media NAME=PATH` (a raw Annex-B H.264 stream, e.g. from `tritonctl.vision.synthetic.write_h264`) is served at
rtsp://HOST:PORT/NAME. The frames are never re-encoded: the file is split into access units once at start-up and a
thread per served mount pushes them into an `appsrc` at the file's frame rate, wrapping from the last frame to the
first. Every buffer is stamped with the pipeline's running time when it is pushed, so timestamps keep increasing
across the loop point and across a pause, exactly like a live camera (no segment seeks, no parser state to reset:
the file starts with an IDR and has no B-frames, so the wrap is a clean restart for the decoder).

Prints `ready` once listening. Reads commands on stdin, one a line: `pause NAME` (the mount stops sending frames,
clients stay connected: a stalled camera), `resume NAME`, `quit`; each pause/resume is acknowledged with a line
`ok pause NAME` / `ok resume NAME`. SIGTERM/SIGINT exit at once. Start-up errors are
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

VCL_TYPES = frozenset(range(1, 6))  # coded slices; 5 is an IDR slice
IDR = 5


class StartupError(Exception):
    """Bad arguments, an unreadable file or a busy port: reported as one line, exit code 2."""


@dataclass(frozen=True)
class AccessUnit:
    data: bytes
    keyframe: bool


@dataclass
class Mount:
    name: str
    frames: list[AccessUnit]
    fps: float
    paused: threading.Event = field(default_factory=threading.Event)


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B stream, without start codes."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    ends = [s - 3 for s in starts[1:]] + [len(data)] * bool(starts)
    # a 4-byte start code leaves its leading zero on the previous unit; a NAL unit never ends in a zero byte
    return [data[s:e].rstrip(b"\x00") for s, e in zip(starts, ends, strict=True) if e > s]


def access_units(data: bytes) -> list[AccessUnit]:
    """Group NAL units into frames (H.264 7.4.1.2.3): a frame ends where a parameter set, SEI or delimiter follows a
    slice, or where a slice starts a new picture (first_mb_in_slice == 0, i.e. the header's first bit is 1)."""
    units: list[AccessUnit] = []
    current: list[bytes] = []
    has_slice = False
    for nal in nal_units(data):
        kind = nal[0] & 0x1F
        new_picture = kind in VCL_TYPES and len(nal) > 1 and nal[1] & 0x80
        if has_slice and (kind not in VCL_TYPES or new_picture):
            units.append(_unit(current))
            current, has_slice = [], False
        current.append(nal)
        has_slice = has_slice or kind in VCL_TYPES
    if has_slice:
        units.append(_unit(current))
    return units


def _unit(nals: list[bytes]) -> AccessUnit:
    return AccessUnit(b"".join(b"\x00\x00\x00\x01" + n for n in nals), any(n[0] & 0x1F == IDR for n in nals))


def load_mount(name: str, path: Path, fps: float) -> Mount:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read {path}: {e.strerror or e}") from None
    frames = access_units(data)
    first_idr = next((i for i, f in enumerate(frames) if f.keyframe), None)
    if first_idr is None:
        raise StartupError(f"{path} is not an Annex-B H.264 stream with a keyframe")
    # every new pipeline starts at frame 0, which must be an IDR so its first client decodes at once
    return Mount(name, frames[first_idr:] + frames[:first_idr], fps)


class Feeder(threading.Thread):
    """Pushes one mount's frames into one pipeline's appsrc in real time, looping, until stopped."""

    def __init__(self, mount: Mount, appsrc: Gst.Element) -> None:
        super().__init__(name=f"feed-{mount.name}", daemon=True)
        self.mount, self.appsrc = mount, appsrc
        self.stopped = threading.Event()

    def run(self) -> None:
        period = 1.0 / self.mount.fps
        index, deadline = 0, time.monotonic()
        while not self.stopped.is_set():
            if not self.mount.paused.is_set() and self.push(self.mount.frames[index], period):
                index = (index + 1) % len(self.mount.frames)
            deadline += period
            now = time.monotonic()
            if deadline < now - 0.5:  # fell far behind (a suspended process): do not burst to catch up
                deadline = now
            self.stopped.wait(max(0.0, deadline - now))

    def push(self, unit: AccessUnit, period: float) -> bool:
        """Push one frame stamped with the running time now; False while the pipeline is not running yet, so the
        frame is pushed again next tick and a new pipeline always starts with the IDR at frame 0."""
        clock = self.appsrc.get_clock()
        if clock is None:
            return False
        buf = Gst.Buffer.new_wrapped(unit.data)
        buf.pts = buf.dts = clock.get_time() - self.appsrc.get_base_time()
        buf.duration = int(period * Gst.SECOND)
        if not unit.keyframe:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        return self.appsrc.emit("push-buffer", buf) == Gst.FlowReturn.OK


def launch_line(fps: float) -> str:
    # config-interval=-1: SPS/PPS go out with every IDR, so a client joining a shared pipeline late decodes from the
    # next keyframe (at most one GOP away) instead of waiting for parameter sets that were sent before it came
    caps = f"video/x-h264,stream-format=byte-stream,alignment=au,framerate={round(fps)}/1"
    return (f"( appsrc name=src is-live=true format=time do-timestamp=false caps={caps} "
            f"! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )")


def make_factory(mount: Mount) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(mount.fps))
    factory.set_shared(True)  # one pipeline per mount, however many clients: a camera encodes once
    factory.connect("media-configure", _on_media_configure, mount)
    return factory


def _on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia, mount: Mount) -> None:
    appsrc = media.get_element().get_by_name("src")
    feeder = Feeder(mount, appsrc)
    # the shared pipeline is torn down when its last client leaves; its feeder goes with it
    media.connect("unprepared", lambda _media: feeder.stopped.set())
    feeder.start()


def make_server(host: str, port: int, mounts: list[Mount]) -> GstRtspServer.RTSPServer:
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(port))
    points = server.get_mount_points()
    for mount in mounts:
        points.add_factory(f"/{mount.name}", make_factory(mount))
    try:
        # create_source binds now and raises on a busy port, where attach() would only log a warning
        server.create_source(None).attach(None)
    except GLib.Error as e:
        raise StartupError(f"cannot listen on {host}:{port}: {e.message}") from None
    return server


def handle_command(line: str, mounts: dict[str, Mount], quit_: Callable[[], None]) -> None:
    words = line.split()
    if not words:
        return
    if words == ["quit"]:
        quit_()
    elif len(words) == 2 and words[0] in ("pause", "resume") and words[1] in mounts:
        if words[0] == "pause":
            mounts[words[1]].paused.set()
        else:
            mounts[words[1]].paused.clear()
        print("ok", *words, flush=True)  # an acknowledgement, so a controller knows the change is in effect
    else:
        print(f"rtsp_server: unknown command {line.strip()!r} (pause NAME | resume NAME | quit)", file=sys.stderr,
              flush=True)


def read_commands(mounts: dict[str, Mount], quit_on_eof: bool) -> None:
    """stdin, one command a line; handled on the main loop so commands and server state change on one thread."""
    for line in sys.stdin:
        GLib.idle_add(_run_once, handle_command, line, mounts, exit_now)
    if quit_on_eof:  # whoever drives us is gone: do not outlive it
        GLib.idle_add(exit_now)


def _run_once(func: Callable[..., object], *args: object) -> bool:
    func(*args)
    return False  # an idle callback that returns True would run again


def exit_now(*_args: object) -> bool:
    # os._exit rather than tearing pipelines down: clients see the connection close, exactly what a camera that
    # loses power looks like, and shutdown cannot hang on a pipeline that is mid-state-change
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--media", action="append", default=[], metavar="NAME=PATH", help="serve PATH at /NAME")
    parser.add_argument("--fps", type=float, default=30.0, help="frames a second to send (the files carry none)")
    parser.add_argument("--quit-on-eof", action="store_true", help="exit when stdin closes (the controller died)")
    return parser.parse_args(argv)


def mounts_from(args: argparse.Namespace) -> dict[str, Mount]:
    if not args.media:
        raise StartupError("nothing to serve: give --media NAME=PATH")
    mounts: dict[str, Mount] = {}
    for spec in args.media:
        name, sep, path = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path:
            raise StartupError(f"bad --media {spec!r}: expected NAME=PATH")
        if name in mounts:
            raise StartupError(f"mount {name!r} given twice")
        mounts[name] = load_mount(name, Path(path), args.fps)
    return mounts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    try:
        mounts = mounts_from(args)
        server = make_server(args.host, args.port, list(mounts.values()))
    except StartupError as e:
        print(f"rtsp_server: {e}", file=sys.stderr, flush=True)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, exit_now)
    threading.Thread(target=read_commands, args=(mounts, args.quit_on_eof), daemon=True).start()
    print("ready", flush=True)
    GLib.MainLoop().run()
    del server  # held until here: the listening socket lives as long as the main loop
    return 0


if __name__ == "__main__":
    sys.exit(main())
