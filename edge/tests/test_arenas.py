"""edge/_arenas.c: the free pools inside pymalloc's arenas given back to the system, and the
interpreter still sound afterwards. Each case runs in a fresh interpreter, so that the arenas
it measures are its own. Needs the compiled build (CI's always is: .ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge import native

needs_build = pytest.mark.skipif(
    not native.is_compiled(), reason="no current compiled core: make native"
)

# A busy spell in miniature: 300,000 calls' worth of small objects, one in 5,000 kept (the
# survivors that pin arenas), the rest freed; then the release's steps.
BUSY_SPELL = """
import asyncio, ctypes, gc, json, sys
from edge.runtime.gc_policy import GcPolicy

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

policy = GcPolicy(full_interval=0, held=lambda: 0)
policy.install(asyncio.new_event_loop())  # as an edge starts: the arena notes from here on
policy.uninstall()  # its timers: this loop never runs
idle = rss_mib()
data = [(i, str(i), {"k": i}, [i] * (i % 7)) for i in range(300_000)]
keep = data[::5000]
del data
busy = rss_mib()
gc.collect()
ctypes.CDLL(None).malloc_trim(0)
freed = rss_mib()
policy.release_memory()
released = rss_mib()

# pymalloc takes the given-back pools again, initialised afresh: the same size classes, then
# others, all checked.
again = [(i, str(i), {"k": i}, [i] * (i % 7)) for i in range(300_000)]
ok = all(t[0] == int(t[1]) == t[2]["k"] and len(t[3]) == i % 7 for i, t in enumerate(again))
ok = ok and all(t[0] == int(t[1]) == t[2]["k"] for t in keep)
del again
policy.release_memory()
mixed = [bytes(range(i % 250)) for i in range(200_000)]
ok = ok and all(b == bytes(range(i % 250)) for i, b in enumerate(mixed))
print(json.dumps({"idle": idle, "busy": busy, "freed": freed, "released": released, "ok": ok,
                  "returned": policy.returned_bytes}))
"""


@needs_build
def test_free_pools_are_given_back_and_used_again_soundly():
    done = subprocess.run(
        [sys.executable, "-c", BUSY_SPELL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["ok"]
    idle, spell = seen["idle"], seen["busy"] - seen["idle"]
    # Freed but resident: the survivors pin nearly every arena (glibc's trim cannot help).
    assert seen["freed"] - idle > 0.8 * spell, seen
    # Given back: each empty pool's pages but its first (3/4 of it), most of what is left.
    assert seen["released"] - idle < 0.5 * spell, seen
    assert seen["returned"] > 20 * 2**20, seen


@needs_build
def test_the_edge_notes_arenas_only_when_it_runs_the_compiled_core():
    """The interpreted core (TRUNKLINE_EDGE_NATIVE=0) does not load the C module at all."""
    code = (
        "from edge.runtime.gc_policy import _pool_give_back; print(_pool_give_back() is not None)"
    )
    compiled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    interpreted = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, native.ENV: "0"},
    )
    assert compiled.stdout.strip() == "True", compiled.stderr
    assert interpreted.stdout.strip() == "False", interpreted.stderr
