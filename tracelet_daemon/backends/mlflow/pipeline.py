"""Several requests of one run in flight, and a barrier before the one that acknowledges them.

Data requests (metric chunks, artifact uploads) may reach MLflow in any order and concurrently:
a point is a point whatever its arrival. The acknowledgement marker must not: it is sent only
after every request before it succeeded (``barrier()``), so "the server holds marker N" implies
"the server holds every row up to N". A failed request poisons the pipeline: the next call
raises, the engine drops the sink, and the rows are replayed from its journal (identical points,
same artifact paths: nothing is stored twice).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Pipeline:
    """At most `depth` calls in flight (1: every call runs at once, in the caller's thread)."""

    def __init__(self, depth: int, name: str = "tracelet-mlflow") -> None:
        self.depth = max(1, depth)
        self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix=name) if self.depth > 1 else None
        self._pending: deque[Future] = deque()
        self._error: BaseException | None = None

    def submit(self, call: Callable[[], None]) -> None:
        """Run `call` now or in the background; raises the first failure of an earlier call."""
        self._raise()
        if self._pool is None:
            call()
            return
        while len(self._pending) >= self.depth:
            self._collect(self._pending.popleft())
            self._raise()
        self._pending.append(self._pool.submit(call))

    def barrier(self) -> None:
        """Wait for every call submitted so far; raise the first failure."""
        while self._pending:
            self._collect(self._pending.popleft())
        self._raise()

    def close(self) -> None:
        """Wait for what is in flight (failures are kept, not raised) and stop the threads."""
        while self._pending:
            self._collect(self._pending.popleft())
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def poison(self, exc: BaseException) -> None:
        """Fail every later call with `exc` (a request outside the pipeline failed)."""
        if self._error is None:
            self._error = exc

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def _collect(self, fut: Future) -> None:
        exc = fut.exception()
        if exc is not None and self._error is None:
            self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
