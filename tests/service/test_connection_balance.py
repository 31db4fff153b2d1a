"""service.connection_balance: which worker may accept, from the shared table of connections."""

from __future__ import annotations

import time

from service.connection_balance import STALE_SECONDS, ConnectionBoard


def test_only_the_worker_with_the_fewest_connections_accepts() -> None:
    board = ConnectionBoard(4)
    first, second = board.claim(), board.claim()
    assert first == 0 and second == 1
    now = time.monotonic()
    board.publish(first, 3, now)
    board.publish(second, 2, now)
    assert not board.has_fewest(first, 3, now)
    assert board.has_fewest(second, 2, now)
    board.publish(first, 2, now)
    assert board.has_fewest(first, 2, now) and board.has_fewest(second, 2, now)  # a tie: both


def test_free_leaving_and_silent_workers_hold_no_one_back() -> None:
    board = ConnectionBoard(4)
    first, second, third = board.claim(), board.claim(), board.claim()
    assert first is not None and second is not None and third is not None
    now = time.monotonic()
    board.publish(first, 5, now)
    board.publish(second, 0, now - STALE_SECONDS - 1)  # its event loop stopped (hung)
    board.publish(third, 0, now)
    assert not board.has_fewest(first, 5, now)
    board.leave(third)  # shutting down
    assert board.has_fewest(first, 5, now)
    board.release(third)  # exited: the slot is free again, for the next worker
    assert board.claim() == third


def test_a_full_board_gives_no_slot() -> None:
    board = ConnectionBoard(1)
    assert board.claim() == 0
    assert board.claim() is None
