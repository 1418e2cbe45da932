"""The explorers' one cache helper and one background worker.

* :class:`LRU`: a bounded table that keeps the most recently used entries (built problems,
  parsed formulas, dense matrices). Numerical reuse of Krylov runs lives in the core
  (:class:`curvlab.SpectrumCache`), not here.
* :class:`BackgroundWorker`: one daemon thread per explorer that runs the newest submitted
  job (a job submitted while another runs replaces any job still waiting) and hands its
  result to a callback on the kernel's asyncio event loop, where widget state may be
  touched, unless the worker was invalidated (a newer refresh) in between: stale results
  are never shown.
* :func:`alongside`: a second thread for one call that overlaps with the caller's work
  (a single-threaded dense ``eigh`` beside a Krylov run).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["LRU", "BackgroundWorker", "alongside"]

V = TypeVar("V")


class LRU(Generic[V]):
    """A table of at most ``maxsize`` entries; the least recently used is dropped first."""

    def __init__(self, maxsize: int):
        if int(maxsize) < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: collections.OrderedDict[Hashable, V] = collections.OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The entry of ``key`` (now the most recently used), made by ``make()`` if absent.

        ``make`` may raise; nothing is stored then.
        """
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = self._data[key] = make()
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


_ALONGSIDE = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="curvlab-alongside")


def alongside(fn: Callable[..., V], *args) -> concurrent.futures.Future[V]:
    """Run ``fn(*args)`` on a helper thread (one for all explorers); returns its future."""
    return _ALONGSIDE.submit(fn, *args)


class BackgroundWorker:
    """One daemon thread running the newest job; results delivered on the event loop if still current.

    ``submit(job, deliver, loop)`` queues ``job`` (replacing a queued job that has not started);
    the thread runs ``result = job()`` and then ``deliver(result, error)`` is called through
    ``loop.call_soon_threadsafe`` (``error`` the exception ``job`` raised, else ``None``), or on
    the thread itself when ``loop`` is ``None`` (code that guards its own state). ``deliver`` is
    skipped when :meth:`invalidate` or another :meth:`submit` was called after this submit.

    Listeners added with :meth:`add_listener` are called with ``True`` when a submit makes
    an idle worker busy (on the submitting thread) and with ``False`` when it runs out of
    work (on ``loop`` of the last job, or on the worker thread without one): an explorer
    shows its busy state from them.
    """

    def __init__(self, name: str = "curvlab-worker"):
        self._name = name
        self._lock = threading.Lock()
        self._next: tuple | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._idle = threading.Event()
        self._idle.set()
        self._listeners: list[Callable[[bool], None]] = []

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(busy)`` when the worker becomes busy or idle (see the class docstring)."""
        self._listeners.append(listener)

    def _notify(self, busy: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(busy)
            except Exception:  # noqa: BLE001 - a display hook must never stop the worker
                pass

    @property
    def busy(self) -> bool:
        """Whether a job is running or queued."""
        return not self._idle.is_set()

    def invalidate(self) -> None:
        """Make the results of every job submitted so far stale (they are not delivered)."""
        with self._lock:
            self._generation += 1

    def submit(self, job: Callable[[], Any], deliver: Callable[[Any, BaseException | None], None], loop=None):
        """Queue ``job``; see the class docstring."""
        with self._lock:
            became_busy = self._idle.is_set()
            self._generation += 1
            self._next = (job, deliver, loop, self._generation)
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
                self._thread.start()
        if became_busy:
            self._notify(True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits (at most ``timeout`` seconds); True when idle."""
        return self._idle.wait(timeout)

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _drain(self) -> None:
        loop = None
        while True:
            with self._lock:
                done = self._next is None
                if done:
                    self._thread = None
                    self._idle.set()
                else:
                    (job, deliver, loop, generation), self._next = self._next, None
            if done:
                self._notify_idle(loop)
                return
            result, error = None, None
            try:
                result = job()
            except Exception as err:  # noqa: BLE001 - handed to deliver
                error = err
            self._deliver(deliver, loop, generation, result, error)

    def _notify_idle(self, loop) -> None:
        """Tell the listeners the worker is idle (on ``loop`` when given), unless it is busy again."""
        if not self._listeners:
            return

        def on_loop():
            if not self.busy:
                self._notify(False)

        _call_on(loop, on_loop)

    def _deliver(self, deliver, loop, generation: int, result, error) -> None:
        def on_loop():
            if self._current(generation):
                deliver(result, error)

        _call_on(loop, on_loop)


def _call_on(loop, fn: Callable[[], None]) -> None:
    """``fn()`` on ``loop`` (``call_soon_threadsafe``), or right here when ``loop`` is ``None``."""
    if loop is None:
        fn()
        return
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # pragma: no cover - the event loop is closed (kernel shutting down)
        pass
