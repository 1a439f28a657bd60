"""Memory of one-shot pruning: what the process holds (resident memory, Linux /proc), what is free for new work
(a GPU's free memory; MemAvailable or a control group's cap on the CPU), the peak of a block of work, and handing
freed memory back to the system between layers (glibc's malloc_trim). Shared by the sequential calibration, the
layer-streamed pruning, the pruner's automatic choice between them and the benchmarks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand freed memory back to the system (glibc's malloc_trim): the allocator otherwise keeps the freed
    activations of each layer's passes, and the process's memory creeps up layer by layer. No-op elsewhere."""
    if _TRIM is not None:
        _TRIM(0)


# --- peak memory ------------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where it cannot be read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def free_bytes(device: torch.device, root: Path = Path("/")) -> int | None:
    """Memory free for new work on `device`: a GPU's free memory (torch.cuda.mem_get_info); on the CPU the system's
    MemAvailable (Linux /proc/meminfo), or less where the process's control group caps its memory (a batch
    scheduler's job: cgroup v2 memory.max - memory.current, v1 memory.limit_in_bytes - memory.usage_in_bytes). None
    where none of them can be read. `root`: where /proc and /sys are (tests)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found: list[int] = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    cgroup = root / "sys/fs/cgroup"
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            cap = (cgroup / limit).read_text().strip()
            if cap != "max" and int(cap) < 2**60:  # "max" (v2) or a page-rounded 2^63 (v1): no cap
                found.append(max(0, int(cap) - int((cgroup / usage).read_text())))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """The peak memory while the block runs, above what was in use when it started: on a GPU the allocator's peak
    (torch.cuda.max_memory_allocated), on a CPU the process's resident memory sampled every 5 ms, from a start with
    the allocator's freed memory handed back (else reused freed memory would hide what the block needs)."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(how="torch.cuda.max_memory_allocated", start_bytes=start)
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        # freed memory the allocator still holds (a dense evaluation's, earlier work's) would be reused unseen: hand
        # it back first, so that the resident memory rises by what the block allocates
        release_memory()
        start = rss_bytes()
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.005)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield out
        finally:
            stop.set()
            t.join()
            peak[0] = max(peak[0], rss_bytes())
            out.update(how="resident memory (RSS), sampled every 5 ms", start_bytes=start, peak_bytes=peak[0])
    out["extra_bytes"] = out["peak_bytes"] - out["start_bytes"]
