"""What the user named as sources (video files, images, folders, globs, RTSP/HTTP URLs, webcam indexes), recognised
and refused before anything starts."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from tritonctl.core.errors import BadInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIVE_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class SourceSpec:
    id: int
    uri: str
    kind: str  # video, stream, webcam, images
    paths: list[Path] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.kind in ("stream", "webcam")


def parse_sources(uris: list[str]) -> list[SourceSpec]:
    """Recognise each source, refusing what cannot be read before anything starts."""
    if not uris:
        raise BadInput("no source given: pass video files, image folders, globs, RTSP/HTTP URLs or webcam indexes")
    specs = []
    for i, uri in enumerate(uris):
        path = Path(uri)
        if uri.isdigit():
            specs.append(SourceSpec(i, uri, "webcam"))
        elif uri.lower().startswith(LIVE_PREFIXES):
            specs.append(SourceSpec(i, uri, "stream"))
        elif any(c in uri for c in "*?["):
            # `**` matches any depth, as in a shell with globstar; a folder source, by contrast, reads only its own files.
            paths = sorted(Path(p) for p in glob.glob(uri, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise BadInput(f"no images match {uri!r}")
            specs.append(SourceSpec(i, uri, "images", paths))
        elif path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise BadInput(f"folder {uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            specs.append(SourceSpec(i, uri, "images", paths))
        elif not path.exists():
            raise BadInput(f"source {uri} does not exist: give a video file, image, folder, glob, URL or webcam index")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            specs.append(SourceSpec(i, uri, "images", [path]))
        else:
            specs.append(SourceSpec(i, uri, "video"))
    return specs
