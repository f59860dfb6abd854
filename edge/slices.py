"""Long work in steps, so the event loop can run it a slice at a time between SIP messages.

A *steps* generator does a bounded piece of work between two ``yield``s and returns its result
(``return value``). `run_to_end` runs one through at once: start-up, tests, a worker thread.
The control API runs the snapshot's decode and compile this way on the event loop
(`edge.runtime.control.run_in_slices`): a thread beside the loop would take the GIL from it
half the time while the loop has work, which halves what the loop carries for as long as the
compile lasts (measured: INVITE->200 p99 48 ms during a 100,000-number apply at half the
edge's rate, against 4 ms before and after).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

# A generator of steps: yields None between them, returns the result.
Steps = Generator[None, None, T]


def run_to_end(steps: Steps[T]) -> T:
    """Run `steps` through at once and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
