"""``ConnectionDrain``: lets a stopping process write the answers it owes before it goes.

``reactor.stop()`` drops every connection without flushing what was written to it, so a
request that finished during the drain would lose its answer at the last moment. This tracks
a ``Site``'s connections; ``close_when_answered`` closes the idle ones at once and the busy
ones right after their answer is written (the transport flushes before it closes), and fires
when all are closed (bounded). Both processes use it: the gateway and each model server.
"""

from twisted.internet import defer
from twisted.logger import Logger


class ConnectionDrain:
    _log = Logger()

    def __init__(self, site, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._open = {}  # channel -> Deferred fired when its connection is lost
        self.closing = False
        build = site.buildProtocol

        def buildProtocol(addr):
            channel = build(addr)
            if channel is not None:
                self._track(channel)
            return channel

        site.buildProtocol = buildProtocol

    def track(self, channel):
        """Track a connection the site did not build (a framed one): it needs ``requests``,
        and closes itself once they are answered when its ``persistent`` is set False."""
        self._track(channel)

    def _track(self, channel):
        lost = defer.Deferred()
        self._open[channel] = lost
        connection_lost = channel.connectionLost

        def tracked_connection_lost(reason):
            self._open.pop(channel, None)
            try:
                connection_lost(reason)
            finally:
                lost.callback(None)

        channel.connectionLost = tracked_connection_lost
        if self.closing:  # accepted after the listening port closed: nothing is owed to it
            self._reactor.callLater(0, self._close, channel)

    def _close(self, channel):
        if getattr(channel, 'requests', None):
            channel.persistent = False  # HTTPChannel closes it when the request is done
        elif channel.transport is not None:
            channel.transport.loseConnection()

    async def close_when_answered(self, timeout):
        """Close every connection once its answer is written; at most ``timeout`` seconds."""
        self.closing = True
        waiting = list(self._open.values())
        for channel in list(self._open):
            self._close(channel)
        if not waiting:
            return
        done = defer.DeferredList(waiting)
        done.addTimeout(timeout, self._reactor)
        try:
            await done
        except defer.TimeoutError:
            self._log.warn('{n} connections still open after {t}s; closing anyway', n=len(self._open), t=timeout)
