"""Keep-alive connections spread over gunicorn's workers: a worker accepts only while it has the
fewest open connections.

gunicorn's workers share one listening socket and whichever wakes first accepts. With keep-alive,
a connection then stays with that worker for good: when a load generator or a proxy's connection
pool opens its connections in a burst, one worker can end up with all of them and do all the work
while its sibling idles (measured: 100 % / 0 % of the CPU, half the throughput). SO_REUSEPORT
(gunicorn's ``reuse_port``) hashes connections over per-worker sockets instead, which is fair on
average only: with 2 to 4 connections, all of them land on one worker in 12-50 % of the cases.

Here each worker publishes its number of open connections in a small table in shared memory and
listens for new connections only while it has no more than any other live worker; a worker with
more stops accepting and looks again every RECHECK_SECONDS. The outcome does not depend on the
client: 8 connections become 4 + 4, 2 become 1 + 1. A worker whose event loop has not published
for STALE_SECONDS (hung, or gone) does not hold the others back.

The table is made in the master before the first fork (``create_board``, from gunicorn.conf.py's
``on_starting``); the master gives each new worker a free slot (``assign_slot`` in ``pre_fork``)
and frees it when the worker exits (``release_slot`` in ``child_exit``).
"""

from __future__ import annotations

import time
from multiprocessing.sharedctypes import RawArray
from typing import Any

from service.request_buffering import BufferingThreadWorker

#: how often a worker that stopped accepting looks again (seconds)
RECHECK_SECONDS = 0.01
#: a worker that has not published for this long is left out of the comparison (seconds); its
#: event loop publishes at least once a second (gthread waits at most 1 s for events)
STALE_SECONDS = 3.0
_FREE = -1
#: a worker that is shutting down: not compared with, not yet free for a new worker
_LEAVING = -2


class ConnectionBoard:
    """Per worker slot, in shared memory: open connections (or _FREE, _LEAVING), a heartbeat."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._connections = RawArray("q", [_FREE] * slots)
        self._beats = RawArray("d", slots)

    def claim(self) -> int | None:
        """A free slot, now taken (in the master, before the fork); None when all are taken."""
        for slot in range(self.slots):
            if self._connections[slot] == _FREE:
                self._connections[slot] = 0
                self._beats[slot] = time.monotonic()
                return slot
        return None

    def release(self, slot: int) -> None:
        self._connections[slot] = _FREE

    def leave(self, slot: int) -> None:
        """The worker stops accepting for good (shutting down): leave it out of comparisons."""
        self._connections[slot] = _LEAVING

    def publish(self, slot: int, connections: int, now: float) -> None:
        self._connections[slot] = connections
        self._beats[slot] = now

    def has_fewest(self, slot: int, connections: int, now: float) -> bool:
        """True when no other live worker has fewer open connections than ``connections``."""
        for other in range(self.slots):
            count = self._connections[other]
            if (
                other != slot
                and 0 <= count < connections
                and now - self._beats[other] < STALE_SECONDS
            ):
                return False
        return True


_board: ConnectionBoard | None = None


def create_board(workers: int) -> None:
    """Make the shared table in the master, before any fork (room for twice ``workers``)."""
    global _board
    _board = ConnectionBoard(max(4, 2 * workers))


def assign_slot(worker: Any) -> None:
    """In the master's pre_fork: give the new worker a slot (None: not balanced, accepts freely)."""
    worker.balance_slot = _board.claim() if _board is not None else None


def release_slot(worker: Any) -> None:
    """In the master's child_exit: free the dead worker's slot."""
    slot = getattr(worker, "balance_slot", None)
    if _board is not None and slot is not None:
        _board.release(slot)


class LeastConnectionsMixin:
    """For gunicorn's gthread worker (or a subclass): accept only while holding the fewest
    connections. Put it first in the bases: ``class W(LeastConnectionsMixin, ThreadWorker)``."""

    # provided by gthread.ThreadWorker
    alive: bool
    nr_conns: int
    worker_connections: int
    _accepting: bool

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's run loop turns accepting on whenever there is room; stay off while unfair
        if enabled and not self._holds_fewest(time.monotonic()):
            enabled = False
        super().set_accept_enabled(enabled)  # type: ignore[misc]

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        slot = getattr(self, "balance_slot", None)
        if _board is not None and slot is not None:
            if not self.alive:  # shutting down: stop holding the others back
                _board.leave(slot)
            else:
                now = time.monotonic()
                _board.publish(slot, self.nr_conns, now)
                if self.nr_conns < self.worker_connections:
                    fair = _board.has_fewest(slot, self.nr_conns, now)
                    if self._accepting != fair:
                        super().set_accept_enabled(fair)  # type: ignore[misc]
                    if not fair:
                        timeout = min(timeout, RECHECK_SECONDS)
        super().wait_for_and_dispatch_events(timeout)  # type: ignore[misc]

    def _holds_fewest(self, now: float) -> bool:
        slot = getattr(self, "balance_slot", None)
        if _board is None or slot is None or not self.alive:
            return True
        return _board.has_fewest(slot, self.nr_conns, now)


class BalancedThreadWorker(LeastConnectionsMixin, BufferingThreadWorker):
    """The service's worker: requests read whole in the event loop (BufferingThreadWorker),
    connections balanced over the workers."""
