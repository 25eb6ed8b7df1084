"""A readers-writer lock: many searches at once, changes one at a time and alone."""
from __future__ import annotations

import threading
from contextlib import contextmanager


class ReadWriteLock:
    """Readers share the lock; a writer waits for running readers and holds new ones
    back until it is done (writers are preferred, so a stream of searches cannot
    starve an update). Not re-entrant."""

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self):
        with self._condition:
            while self._writer or self._waiting_writers:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def writing(self):
        with self._condition:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()
