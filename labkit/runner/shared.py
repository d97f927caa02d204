"""One helper process for the batches running in a labkit process: the warm-kernel server
(:mod:`labkit.runner.warm`) and the export process (:mod:`labkit.runner.exporter`) are each started by the
first batch, shared by any batch that starts while it runs (tests and API callers run batches in threads),
and closed when the last of them ends. A helper that cannot start is no error: its batches run without it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

log = logging.getLogger("labkit.runner")

T = TypeVar("T")  # a helper: has ``users`` (an int) and ``close()``


class Shared(Generic[T]):
    def __init__(self, what: str, without: str) -> None:
        self._what, self._without = what, without  # for the log line when it cannot start
        self._current: T | None = None
        self._lock = threading.Lock()

    def current(self) -> T | None:
        return self._current

    @contextmanager
    def use(self, start: Callable[[], T]) -> Iterator[T | None]:
        """The running helper, or one ``start()``\\ ed now; None when it cannot start (``OSError``)."""
        with self._lock:
            helper = self._current
            if helper is None:
                try:
                    helper = self._current = start()
                except OSError as e:  # no process, no temporary folder
                    log.info("%s did not start (%s); %s", self._what, e, self._without)
            if helper is not None:
                helper.users += 1
        if helper is None:
            yield None
            return
        try:
            yield helper
        finally:
            with self._lock:
                helper.users -= 1
                last = helper.users == 0
                if last:
                    self._current = None
            if last:
                helper.close()
