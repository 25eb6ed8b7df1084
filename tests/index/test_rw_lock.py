"""ReadWriteLock behaviour, driven by events: every wait is bounded, so a
broken lock fails the test instead of hanging it."""
import threading
import time

import pytest

from index.rw_lock import ReadWriteLock

TIMEOUT = 5.0


class Holder:
    """A thread that takes the lock (``reading`` or ``writing``), says so, and keeps
    it until released."""

    def __init__(self, lock, mode):
        self.entered, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(getattr(lock, mode),), daemon=True)
        self.thread.start()

    def _run(self, take):
        with take():
            self.entered.set()
            self.release.wait(TIMEOUT)

    def finish(self):
        self.release.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def wait_until(condition):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def blocked(holder):
    """The holder has not got the lock (given a moment in which it could have)."""
    return not holder.entered.wait(0.05)


def test_readers_hold_the_lock_together():
    """Four readers meet at a barrier inside the lock: impossible unless all hold it at once."""
    lock, barrier, errors = ReadWriteLock(), threading.Barrier(4, timeout=TIMEOUT), []

    def reader():
        with lock.reading():
            try:
                barrier.wait()
            except threading.BrokenBarrierError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors and not any(t.is_alive() for t in threads)


def test_a_writer_waits_for_readers_and_holds_back_new_ones():
    lock = ReadWriteLock()
    reader = Holder(lock, "reading")
    assert reader.entered.wait(TIMEOUT)
    writer = Holder(lock, "writing")
    wait_until(lambda: lock._waiting_writers == 1)  # the writer is queued
    assert blocked(writer)
    late_reader = Holder(lock, "reading")  # arrives while the writer waits: must not overtake it
    assert blocked(late_reader)
    reader.finish()
    assert writer.entered.wait(TIMEOUT)
    assert blocked(late_reader)
    writer.finish()
    assert late_reader.entered.wait(TIMEOUT)
    late_reader.finish()


def test_writers_exclude_each_other():
    lock = ReadWriteLock()
    first = Holder(lock, "writing")
    assert first.entered.wait(TIMEOUT)
    second = Holder(lock, "writing")
    wait_until(lambda: lock._waiting_writers == 1)
    assert blocked(second)
    first.finish()
    assert second.entered.wait(TIMEOUT)
    second.finish()


@pytest.mark.parametrize("mode", ["reading", "writing"])
def test_an_exception_releases_the_lock(mode):
    lock = ReadWriteLock()
    with pytest.raises(RuntimeError):
        with getattr(lock, mode)():
            raise RuntimeError("search failed")
    writer = Holder(lock, "writing")
    assert writer.entered.wait(TIMEOUT)
    writer.finish()
