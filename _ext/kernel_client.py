"""Notebook execution without missed wake-ups of the kernel client.

jupyter_client's asyncio channels wait for a kernel's message with one ``zmq.asyncio`` poll
of the whole timeout. After a burst of messages (a cell that displays ipywidgets sends
dozens of comm messages) that poll can miss the wake-up for a message that has already
arrived: the client then sleeps through the rest of the cell's timeout before it reads a
reply the kernel sent at once, with the kernel and the client both idle. Measured on this
project's 2-core machine (ipykernel 7.4, pyzmq 27.3; pyzmq 26.4 and ipykernel 6.31 the
same): in 12 notebooks of 40 widget cells each, run with a 30 s cell timeout, 13 cells in
9 of the notebooks waited exactly 30 s; with this extension, none. In a fresh build's
visible-cells step (600 s per cell) one such wait made the step 929 s instead of 317 s.

The fix: wait in slices of :data:`SLICE` seconds up to the same deadline, so that a message
that has arrived is read within a slice whether or not its wake-up came. The book's build
loads this as a Sphinx extension (``_config.yml``); the visible-cells test and
``tests/run_chapter.py`` call :func:`apply`.
"""

from __future__ import annotations

import math
import time
from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

#: Seconds of one poll of the kernel's socket.
SLICE = 0.25


async def get_msg(self, timeout: float | None = None) -> dict:
    """``AsyncZMQSocketChannel.get_msg``, polling in slices: the next message, or ``Empty``
    once ``timeout`` seconds have passed (``None``: wait for ever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
        # at least 1 ms while time is left: a 0 ms poll returns at once, without yielding
        if await self.socket.poll(math.ceil(left * 1000)):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


def apply() -> None:
    """Make every asyncio kernel-client channel of this process poll in slices."""
    AsyncZMQSocketChannel.get_msg = get_msg


def setup(app):
    apply()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
