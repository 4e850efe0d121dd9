"""A finished trial's freed memory, given back to the operating system.

Tune runs each trial's function in a thread of its own, and an actor runs trial after trial.
glibc's malloc gives threads arenas of their own and keeps what a thread frees inside its arena
for later use. So an actor held, after each trial, the peak of every arena its trials had used.
A trial's peak grows with the corpus (its items, pooled vectors and batches), and so the actor
grew trial after trial: on S2 with 4,000 clips, eight trials run one thread each in one process
went from 495 to 840 MB of anonymous memory. The same process, trimmed, held 593 MB.

`release_freed_memory()` collects Python's cyclic garbage and asks the C library to give free
heap pages back (glibc's `malloc_trim`: 0.2 ms). Elsewhere (macOS, musl) it only collects.
A full collection walks every object in the process: 0.1 s with a trial's imports and caches
(211,000 objects at 4,000 clips), a cost on trials of seconds. So `trimmed` collects fully
after a trial that grew the process by 32 MB or more, where a trial's cycles can hold real
memory, and only the young generations after one that did not (0.1 ms). The largest trial of
the 4,000-clip S2 sweep held 936–951 MB after full collections and 898–1,067 MB after young
ones alone (three runs each): the old cycles matter at that size.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import sys
from typing import Callable

FULL_AFTER_BYTES = 32 * 2**20  # a trial that grew the process this much gets a full collection


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own C library; glibc only
    except (OSError, AttributeError):
        return None


def anonymous_bytes() -> int | None:
    """The process's own (anonymous) resident memory, from /proc; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_freed_memory(full: bool = True) -> bool:
    """Free Python's unreachable cycles (`full`: every generation, else the young ones), then
    hand free heap pages back to the OS. Returns whether the C library released any memory
    (False where it cannot say)."""
    gc.collect() if full else gc.collect(1)
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def trimmed(fn: Callable) -> Callable:
    """A trial function that gives back what it freed when it ends (release_freed_memory), so
    the actor (or process) that runs the next trial starts from its own size, not the peak of
    every trial before; a full collection only after a trial that grew the process."""
    @functools.wraps(fn)
    def trial(config, *args, **kwargs):
        before = anonymous_bytes()
        try:
            return fn(config, *args, **kwargs)
        finally:
            after = anonymous_bytes()
            release_freed_memory(full=before is None or after is None or after - before >= FULL_AFTER_BYTES)
    return trial
