"""What local servers leave behind, found by their id and removed: Triton's Python backend stubs that outlive a
SIGKILLed server, and shared-memory regions in /dev/shm named `tritonctl-srv-<id>_…`. Never another's: clients
name theirs `tritonctl-cli-<pid>_…` (inference/client.py), which no server clean-up matches."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from tritonctl.core import procs

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "tritonctl-srv-"  # + server id + "_": the Python backend's shm-region-prefix-name for our servers
# Servers started before the split named their regions `tritonctl_<16 hex>_…`; clients then used `tritonctl_<pid>_…`,
# which 16 hex digits never match (a pid has at most 7), so this finds only those servers' regions.
_LEGACY_REGION = re.compile(r"tritonctl_([0-9a-f]{16})_")
STUB = "triton_python_backend_stub"


def region_server(name: str) -> str | None:
    """The id of the server that made the /dev/shm region `name`; None for anything else (a client's region)."""
    if name.startswith(SHM_PREFIX):
        server_id = name[len(SHM_PREFIX):].split("_", 1)[0]
        return server_id or None
    m = _LEGACY_REGION.match(name)
    return m.group(1) if m else None


def shm_regions(server_id: str | None = None) -> list[Path]:
    """Our servers' Python-backend regions in /dev/shm (of one server when `server_id` is given), ours to remove;
    never a client's."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            owner = region_server(entry.name)
            if owner is None or (server_id and owner != server_id):
                continue
            with contextlib.suppress(OSError):  # removed meanwhile
                if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                    found.append(Path(entry.path))
    return found


def remove_shm(server_id: str) -> int:
    """Remove the regions one server's processes made (by its id); 0 without an id."""
    if not server_id:
        return 0
    removed = 0
    for path in shm_regions(server_id):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def sweep_orphans() -> list[str]:
    """End what our dead servers left: stubs whose tritonserver is gone (they outlive a SIGKILLed server, each holding
    hundreds of MB) and shared-memory regions of servers that no longer run. Returns what was removed.

    Clients' regions are never touched, not even those of a pid that looks dead: a client in a container that shares
    this /dev/shm (`--ipc=host`) has pids we cannot see, and a client that died is cleaned up after by its own
    multiprocessing resource tracker (tritonclient's regions are multiprocessing shared memory)."""
    regions = shm_regions()  # listed before the processes: a region created after this is never a candidate
    by_server: dict[str, list[int]] = {}
    for pid, server_id in procs.marked(procs.MARK_ENV).items():
        by_server.setdefault(server_id, []).append(pid)
    removed: list[str] = []
    for pids in by_server.values():
        names = [Path(a[0]).name if (a := procs.cmdline(p)) else "" for p in pids]
        if STUB in names and "tritonserver" not in names:
            killed, _ = procs.kill_all(p for p, n in zip(pids, names, strict=True) if n == STUB)
            removed.extend(killed)
    running = set(procs.marked(procs.MARK_ENV).values())
    for path in regions:
        if region_server(path.name) not in running:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
    return removed
