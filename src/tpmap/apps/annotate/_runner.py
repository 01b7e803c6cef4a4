"""Store calls off the event loop: one at a time, in order, results on the next tick."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bokeh.document import Document

__all__ = ["Runner"]


class Runner:
    """Runs store calls one at a time on a worker thread; results return on the next tick.

    One worker per page keeps a clinician's changes in the order they were made (a tap, then
    its details, then a drag). A document without a server session (document-level tests,
    notebooks) runs the calls inline, so tests see the result at once.
    """

    def __init__(self, doc: Document):
        self.doc = doc
        self.inline = doc.session_context is None
        self.pool = None if self.inline else ThreadPoolExecutor(1, thread_name_prefix="tpmap-store")
        if self.pool is not None:
            pool = self.pool
            # Let queued writes finish when the tab closes: a tap shown as saving is kept.
            doc.on_session_destroyed(lambda _ctx: pool.shutdown(wait=True))

    def submit(
        self,
        work: Callable[[], Any],
        done: Callable[[Any], None],
        failed: Callable[[Exception], object],
    ) -> None:
        """Run ``work()`` off the event loop, then ``done(result)`` or ``failed(exc)`` on it."""
        if self.pool is None:
            try:
                result = work()
            except Exception as exc:
                failed(exc)
            else:
                done(result)
            return

        def back(fut: Future[Any]) -> None:
            def deliver() -> None:
                exc = fut.exception()
                if exc is None:
                    done(fut.result())
                elif isinstance(exc, Exception):
                    failed(exc)

            self.doc.add_next_tick_callback(deliver)

        self.pool.submit(work).add_done_callback(back)
