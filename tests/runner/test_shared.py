"""labkit.runner.shared.Shared: one helper for the batches running at once, closed by the last; a helper
that cannot start leaves its batch without it and blocks no other batch."""

from __future__ import annotations

import threading

from labkit.runner.shared import Shared


class Helper:
    def __init__(self) -> None:
        self.users, self.closed = 0, 0

    def close(self) -> None:
        self.closed += 1


def test_batches_share_one_helper_closed_once_by_the_last():
    shared: Shared[Helper] = Shared("a helper", "without it")
    started = []
    with shared.use(lambda: started.append(Helper()) or started[-1]) as first:
        with shared.use(Helper) as second:
            assert second is first and first.users == 2 and shared.current() is first
        assert first.users == 1 and first.closed == 0
    assert first.closed == 1 and shared.current() is None and len(started) == 1
    with shared.use(Helper) as again:
        assert again is not first  # a later batch starts its own


def test_a_helper_that_cannot_start_blocks_no_other_batch():
    shared: Shared[Helper] = Shared("a helper", "without it")

    def refuse() -> Helper:
        raise OSError("no process")

    with shared.use(refuse) as none:
        assert none is None and shared.current() is None
        got = []

        def another_batch() -> None:
            with shared.use(Helper) as helper:
                got.append(helper)

        other = threading.Thread(target=another_batch)
        other.start()
        other.join(timeout=5)
        assert not other.is_alive() and isinstance(got[0], Helper)  # the lock is not held by the failed batch
        assert got[0].closed == 1
