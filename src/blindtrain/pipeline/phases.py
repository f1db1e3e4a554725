"""A clock that attributes the trusted side's time to the ledger's enclave-time categories.

Each span is wall time less the waits on workers inside it (:meth:`Ledger.own_seconds`), so a
category never counts worker time, and since the clock is in exactly one category at a time, nested
uses never count a second twice (``with ledger.timed(a): with ledger.timed(b)`` would)."""

from __future__ import annotations

from contextlib import contextmanager

from ..ledger import Ledger


class Phases:
    """The current category of the trusted side's time, switched by :meth:`use`.

    Args:
        ledger: where the seconds go (``ledger.category_seconds``).
        category: the category the clock starts in (it runs from :meth:`start` to :meth:`stop`).
    """

    def __init__(self, ledger: Ledger, category: str) -> None:
        self.ledger = ledger
        self._check(category)
        self.category = category
        self._mark = None

    def _check(self, category: str) -> None:
        if category not in self.ledger.category_seconds:
            raise KeyError(f"unknown enclave-time category {category!r}; known: {sorted(self.ledger.category_seconds)}")

    def _switch(self, category: str) -> str:
        previous = self.category
        if self._mark is not None:
            self.ledger.category_seconds[previous] += self.ledger.own_seconds(self._mark)
            self._mark = self.ledger.span_mark()
        self.category = category
        return previous

    def start(self) -> "Phases":
        self._mark = self.ledger.span_mark()
        return self

    def stop(self) -> None:
        if self._mark is not None:
            self.ledger.category_seconds[self.category] += self.ledger.own_seconds(self._mark)
            self._mark = None

    @contextmanager
    def running(self, category: str):
        """Run the clock in ``category`` for the block, then stop it."""
        self._check(category)
        self.category = category
        self.start()
        try:
            yield self
        finally:
            self.stop()

    @contextmanager
    def use(self, category: str):
        """Attribute the block's time to ``category``, then go back to the category before it."""
        self._check(category)
        previous = self._switch(category)
        try:
            yield
        finally:
            self._switch(previous)
