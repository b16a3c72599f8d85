"""System shared-memory regions of this client: created all or none, registered with a server (again after it
restarted), released at the end, and a region another process removed named as such, not blamed on the server."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonctl.core.errors import TritonctlError
from tritonctl.inference.calls import TransientError, triton_call

_region_ids = itertools.count()
# Our regions in /dev/shm are `tritonctl-cli-<pid>_<role><n>`: a namespace of their own, apart from the local servers'
# `tritonctl-srv-<id>_…` (server.py), so that no server's clean-up ever takes a running client's regions.
REGION_PREFIX = "tritonctl-cli-"
SHM_DIR = "/dev/shm"
REMOVED_ELSEWHERE = "removed by another process on this host"


@dataclass
class Region:
    """One region: its name on the server, its key in /dev/shm, its bytes, and the array over its memory."""

    name: str
    key: str
    size: int
    handle: Any
    array: np.ndarray



def register_region(client: Any, url: str, region: Region) -> None:
    """Register a region; a server that still holds the name from before an outage gets it replaced."""
    try:
        with triton_call(url, f"register shared memory {region.name}"):
            client.register_system_shared_memory(region.name, region.key, region.size)
    except TransientError:
        raise
    except TritonctlError:
        with triton_call(url, f"register shared memory {region.name}"):
            client.unregister_system_shared_memory(region.name)
            client.register_system_shared_memory(region.name, region.key, region.size)


def unregister_regions(client: Any, url: str, regions: list[Region], gone_ok: bool = False) -> list[str]:
    """`gone_ok`: a server that cannot be reached is no problem (it left the pool; its registrations went with it)."""
    problems = []
    for region in regions:
        try:
            with triton_call(url, f"unregister {region.name}"):
                client.unregister_system_shared_memory(region.name)
        except TransientError as exc:
            if not gone_ok:
                problems.append(f"unregister {region.name} on {url}: {exc}")
        except TritonctlError as exc:
            problems.append(f"unregister {region.name} on {url}: {exc}")
    return problems


def create_regions(wanted: list[tuple[str, tuple[int, ...], np.dtype]]) -> list[Region]:
    """All the regions or none: when one cannot be created, those made before it are destroyed again."""
    made: list[Region] = []
    try:
        for role, shape, dtype in wanted:
            made.append(_create_region(role, shape, dtype))
    except BaseException:
        destroy_regions(made)
        raise
    return made


def destroy_regions(regions: list[Region]) -> list[str]:
    """Unmap and remove the regions; the problems met. A region already gone from /dev/shm (another process removed
    it) is no error of ours: one line says so, however many were gone, and nothing is left for the resource tracker
    to warn about at exit."""
    import tritonclient.utils.shared_memory as shm

    problems, gone = [], 0
    for region in regions:
        try:
            with triton_call("this host", f"destroy shared memory {region.name}"):
                try:
                    shm.destroy_shared_memory_region(region.handle)
                except FileNotFoundError:
                    gone += 1
                    _untrack(region)
        except TritonctlError as exc:
            problems.append(f"destroy {region.name}: {exc}")
    if gone:  # the same line from every slot, so that a run reports it once
        problems.append(f"shared-memory regions of this run were {REMOVED_ELSEWHERE} before it ended")
    return problems


def shm_file(region: Region) -> str:
    """The /dev/shm name of the memory we created and mapped (the handle's: what we registered says only a key)."""
    name = getattr(getattr(region.handle, "_mpsm_handle", None), "name", None) or region.key
    return "/" + str(name).lstrip("/")


def region_exists(region: Region) -> bool:
    return os.path.exists(SHM_DIR + shm_file(region))


def _untrack(region: Region) -> None:
    """multiprocessing unregisters a region from its resource tracker only once shm_unlink succeeds: for one that
    someone else removed, the tracker would try again at exit and warn ("leaked shared_memory objects")."""
    from multiprocessing import resource_tracker

    handle = getattr(region.handle, "_mpsm_handle", None)
    name = getattr(handle, "_name", None)
    if name:
        resource_tracker.unregister(name, "shared_memory")


def _create_region(role: str, shape: tuple[int, ...], dtype: np.dtype) -> Region:
    import tritonclient.utils.shared_memory as shm

    name = f"{REGION_PREFIX}{os.getpid()}_{role}{next(_region_ids)}"
    size = int(np.prod(shape)) * dtype.itemsize
    with triton_call("this host", f"create shared memory {name} ({size} bytes)"):
        handle = shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
    return Region(name, f"/{name}", size, handle, shm.get_contents_as_numpy(handle, dtype, shape))

