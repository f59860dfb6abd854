"""An asyncio event loop on a fake clock, for tests of the runtime's own timers.

`VirtualTimeLoop.time()` is a counter that starts at 0. When the loop would wait for its next
timer and no I/O is ready, the clock jumps to that timer instead of sleeping: ``await
asyncio.sleep(30)`` and ``loop.call_later(30, ...)`` take no real time, and timers fire in
exactly the order and at exactly the times their delays say, however loaded the machine is.
I/O still works (a ready socket is served at the current virtual time); a loop with nothing
scheduled waits for I/O for real.

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, instead of blocking until a timeout, advances the clock by it."""

    def __init__(self, clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: only I/O can wake the loop
            return self._real.select(None)
        self._clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps from timer to timer (module docstring)."""

    def __init__(self) -> None:
        self._clock = _Clock()
        super().__init__(selector=_JumpingSelector(self._clock))

    def time(self) -> float:
        return self._clock.now
