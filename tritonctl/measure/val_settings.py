"""`val`'s settings, checked before anything runs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonctl.core.endpoint import Endpoint, parse_endpoints
from tritonctl.core.errors import BadInput
from tritonctl.inference.discovery import DiscoverTarget, parse_discover
from tritonctl.vision.postprocess import PostSettings

VAL_DECODING = {"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True}  # Ultralytics' val defaults


@dataclass(frozen=True)
class ValSettings:
    model: str
    data: Path
    endpoints: list[Endpoint]
    out_dir: Path
    protocol: str = "http"
    shm: str = "auto"
    split: str = "val"
    images: Path | None = None  # a COCO json's image folder
    max_images: int | None = None
    reference: Path | None = None
    max_drop: float = 0.005
    post: PostSettings = field(default_factory=lambda: PostSettings(**VAL_DECODING))  # type: ignore[arg-type]
    batch: int | None = None
    concurrency: int = 4
    server_timeout_s: float = 30.0
    discover: DiscoverTarget | None = None  # --discover: the addresses of a name join --url's, kept up to date

    @classmethod
    def create(cls, *, model: str, data: Path, urls: list[str], out_dir: Path | None = None, discover: str | None = None,
               discover_dns: str | None = None, discover_interval_s: float | None = None, **kw: Any) -> ValSettings:
        protocol = kw.get("protocol", "http")
        if discover:
            kw["discover"] = parse_discover(discover, protocol, discover_dns, discover_interval_s)
        elif discover_dns or discover_interval_s is not None:
            raise BadInput("--discover-dns and --discover-interval go with --discover NAME:PORT")
        # With --discover, no --url means no fixed endpoint (not this host's default): the name's addresses only.
        endpoints = parse_endpoints(urls, protocol) if urls or not discover else []
        out = out_dir or Path("reports") / f"val-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        s = cls(model=model, data=data, endpoints=endpoints, out_dir=out, **kw)
        s._check()
        return s

    def _check(self) -> None:
        if not self.data.is_file():
            raise BadInput(f"--data {self.data}: no such file (give an Ultralytics dataset yaml or a COCO annotation json)")
        if self.data.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise BadInput(f"--data {self.data}: expected a dataset .yaml or a COCO .json")
        if self.shm not in ("auto", "system", "none"):
            raise BadInput(f"--shm {self.shm!r}: choose auto, system or none")
        if self.max_images is not None and self.max_images < 1:
            raise BadInput(f"--max-images {self.max_images}: give at least 1")
        if (self.batch is not None and self.batch < 1) or self.concurrency < 1:
            raise BadInput("--batch and --concurrency must be at least 1")
        if not 0 <= self.max_drop <= 1:
            raise BadInput(f"--max-drop {self.max_drop:g}: an mAP difference lies in 0..1, e.g. 0.005")
        if self.reference is not None:
            if self.reference.suffix != ".pt" or not self.reference.is_file():
                raise BadInput(f"--reference {self.reference}: give the checkpoint (.pt) the served model came from")
            if self.data.suffix.lower() == ".json":
                raise BadInput("--reference needs a YOLO dataset yaml: Ultralytics' val does not read COCO json labels")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise BadInput(f"--out-dir {self.out_dir} is a file: name a folder")
        # Checked now, made at the end: a folder that cannot be made fails before the run, and a failed run leaves none.
        above = next(p for p in (self.out_dir, *self.out_dir.parents) if p.exists())
        if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
            raise BadInput(f"--out-dir {self.out_dir}: cannot make the folder ({above} is "
                           f"{'not a folder' if not above.is_dir() else 'not writable'})")


# ---------------------------------------------------------------- results


