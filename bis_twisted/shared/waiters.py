"""``Waiters``: the Deferreds of those who wait for a state ("idle", "ready", "exited"),
fired together when it is reached."""

from typing import Any, List

from twisted.internet import defer


class Waiters:
    """``wait()`` gives a Deferred that ``fire(result)`` fires, with every other one given
    since the last ``fire``; cancelling one only forgets it (its waiter gave up)."""

    def __init__(self) -> None:
        self._waiting: "List[defer.Deferred[Any]]" = []

    def wait(self) -> "defer.Deferred[Any]":
        d: "defer.Deferred[Any]" = defer.Deferred(canceller=self._forget)
        self._waiting.append(d)
        return d

    def _forget(self, d: "defer.Deferred[Any]") -> None:
        if d in self._waiting:
            self._waiting.remove(d)

    def fire(self, result: Any = None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)

    def __len__(self) -> int:
        return len(self._waiting)
