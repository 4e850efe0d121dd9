"""A trial gives back the memory it freed (workloads/core/heap.py): Tune runs each trial in a
thread of its own, and glibc kept each thread's freed heap, so an actor grew trial by trial."""
import gc
import inspect
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from workloads.core.heap import _malloc_trim, anonymous_bytes, release_freed_memory, trimmed

MB = 2**20


def anon_mb() -> float:
    anon = anonymous_bytes()
    assert anon is not None, "no RssAnon in /proc/self/status"
    return anon / MB


KEPT: list = []


def churn(config, tracking=None):
    """What a trial does to the heap: 200 MB in blocks under malloc's mmap threshold, freed,
    with small objects made among them that outlive the trial (a memo, a result): the freed
    blocks lie between them, so no heap can shrink from its top or be dropped whole."""
    blocks = []
    for i in range(2_000):
        blocks.append(bytearray(100_000))
        if i % 100 == 99:  # from malloc itself: Python serves objects under 512 bytes from its own pools
            KEPT.append(bytearray(4_096))
    del blocks
    return config["value"]


def holds(config, tracking=None):
    """A trial that leaves 64 MB behind (touched, so resident), as a cache it fills would."""
    block = bytearray(64 * MB)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))
    KEPT.append(block)
    return config["value"]


def in_thread(fn, *args):
    """fn(*args) in a fresh thread, as Tune runs a trial; its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out[0]


MEASURE = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
from test_heap import anon_mb, churn, in_thread
from workloads.core.heap import release_freed_memory, trimmed

release_freed_memory()
base = anon_mb()
in_thread(churn, {{"value": 1}})
kept = anon_mb() - base
released = release_freed_memory()
after_trim = anon_mb() - base
base = anon_mb()
in_thread(trimmed(churn), {{"value": 2}})
print(json.dumps({{"kept": kept, "released": released, "after_trim": after_trim, "trimmed": anon_mb() - base}}))
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim only")
def test_a_trimmed_trial_leaves_its_thread_s_freed_heap_with_the_os():
    # in a fresh process: the arenas a long test session's threads left behind (half full,
    # shared once there are eight per core) would take part of the blocks
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", MEASURE.format(tests=str(here), root=str(here.parent))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["kept"] > 100, f"the untrimmed trial's freed blocks were given back already: {m}"
    assert m["released"] is True and m["after_trim"] < 40, m
    assert m["trimmed"] < 40, m


def test_trimmed_is_the_same_trial_to_its_callers():
    wrapped = trimmed(churn)
    # tune.with_parameters reads the signature to pass `tracking`; Tune names trials after it
    assert inspect.signature(wrapped) == inspect.signature(churn)
    assert wrapped.__name__ == "churn"

    def fails(config, tracking=None):
        raise ValueError(config["why"])

    with pytest.raises(ValueError, match="broken"):
        trimmed(fails)({"why": "broken"})


def test_a_full_collection_only_after_a_trial_that_grew_the_process():
    seen = []

    def watch(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(watch)
    try:
        assert trimmed(lambda config: config["value"])({"value": 3}) == 3  # grows nothing: the young ones
        small = list(seen)
        seen.clear()
        in_thread(trimmed(holds), {"value": 4})  # leaves the process 64 MB bigger
        grown = list(seen)
        KEPT.clear()
    finally:
        gc.callbacks.remove(watch)
    assert small and max(small) <= 1, small
    assert 2 in grown, grown
