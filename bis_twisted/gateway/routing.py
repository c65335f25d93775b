"""Where a request goes: ``Router`` picks the ready target with the fewest requests in
flight, sends the request there (once more to another replica when the first dropped it),
counts it in flight (``inflight``) while it is, and says why with a 503 when no target can
take it.
"""

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import ServerFailed, ServerStopped, ServiceUnavailable
from ..shared import tracing
from . import spread
from .proxy import ChildConnectionLost, ChildStream, NotConnected

SUSPECT_SECONDS = 2.0  # how long a target that dropped a request is skipped, at most


class Router:
    """Picks a target of ``topology``'s servers for each request and sends it with ``client``,
    counted in ``in_flight``; ``supervisor`` says which children are ready."""

    _log = Logger()

    def __init__(self, topology, supervisor, client, in_flight, clock):
        self._topology = topology
        self._supervisor = supervisor
        self._client = client
        self._in_flight = in_flight
        self._clock = clock

    def target_ready(self, target):
        """Whether ``target`` can take a request now."""
        if target.suspect_until and target.suspect_until > self._clock.seconds():
            return False
        if target.child_name is None:
            return target.remote_ok
        return self._supervisor.is_ready(target.child_name)

    def child_event(self, name, event):
        """The supervisor's news of child ``name``: a replica that dropped a request and was
        then restarted is trusted again once it is ready."""
        if event == 'ready':
            for server in self._topology.servers.values():
                for target in server.targets:
                    if target.child_name == name:
                        target.suspect_until = 0.0

    def pick(self, server, exclude=()):
        """The ready target with the fewest requests in flight, or 503 saying why none is."""
        best = None
        # a remote server's addresses (pods behind one name) take turns on a tie
        targets = spread.in_turn(server) if server.config.is_remote else server.targets
        for target in targets:
            if target in exclude or not target.active or not self.target_ready(target):
                continue
            if best is None or target.in_flight < best.in_flight:
                best = target
        if best is None:
            raise self.unavailable(server)
        return best

    def unavailable(self, server):
        """The 503 that says why no target of ``server`` can take a request now."""
        name = server.name
        if server.config.is_remote:
            return ServiceUnavailable('server {!r} is not answering at {}; retry shortly'.format(
                name, ', '.join(server.config.urls)))
        states = [self._supervisor.status(t.child_name) for t in server.targets if t.active]
        wanted = [s for s in states if s.wanted]
        if not wanted:
            return ServerStopped('server {!r} is stopped (disabled or killed); POST /start_server to start it'.format(
                name))
        if all(s.failed for s in wanted):
            return ServerFailed('server {!r} failed {} times in a row before it was ready: {}; it is still retried, '
                                'but needs a fix (see its log)'.format(name, self._supervisor.crash_loop_after,
                                                                       wanted[0].last_error))
        if any(s.running and s.ready and not s.stopping for s in wanted):
            return ServiceUnavailable('server {!r} is not answering; retry shortly'.format(name))
        if any(s.running and s.stopping for s in wanted):
            return ServiceUnavailable('server {!r} is being replaced; retry shortly'.format(name))
        if any(s.running for s in wanted):
            return ServiceUnavailable('server {!r} is starting (loading its workers); retry shortly'.format(name))
        last = next((s.last_error for s in wanted if s.last_error), None)
        return ServiceUnavailable('server {!r} is restarting{}; retry shortly'.format(
            name, ' after: {}'.format(last) if last else ''))

    async def run(self, name, payload, request_id=None, answer_fields=None):
        """Send ``payload`` to the least busy ready target of server ``name``.

        A target the request never reached (refused: it just died) is skipped for the next
        one. A target that dropped the connection before answering (it crashed) has the
        request sent once more, to another ready target, unless the endpoint says
        ``RETRY_ON_CRASH: false`` (a ``_predict`` not safe to run twice)."""
        server = self._topology.server(name)
        tried = []
        crashed = None
        while True:
            try:
                target = self.pick(server, exclude=tried)
            except ServiceUnavailable:
                if crashed is not None:
                    raise crashed from None  # no other replica to take it: the 502 stands
                raise
            try:
                return await self._send(server, target, payload, request_id, answer_fields)
            except NotConnected as exc:
                tried.append(target)
                if target.child_name is None:
                    target.remote_ok = False
                if len(tried) >= len(server.targets):
                    if crashed is not None:
                        raise crashed from None
                    raise ServiceUnavailable('server {!r} is not accepting connections ({}); it may be '
                                             'restarting, retry shortly'.format(name, exc.reason)) from None
            except ChildConnectionLost as exc:
                if crashed is not None or not server.config.retry_on_crash or len(server.targets) < 2:
                    raise
                crashed = exc
                tried.append(target)
                self._log.info('server {name}: a replica dropped a request; sending it to another',
                               name=name)

    async def _send(self, server, target, payload, request_id, answer_fields=None):
        child = self._in_flight.started(target)
        streaming = False
        try:
            with tracing.hop_span(server.name, target):  # OpenTelemetry's client span, when on
                result = await self._client.post_json(target.run_url, payload, server.config.timeout,
                                                      repr(server.name), request_id=request_id,
                                                      answer_fields=answer_fields)
            if isinstance(result, ChildStream):
                # in flight until its last line: its first bytes are on their way, so a
                # failure from here on is never sent to another target
                streaming = True
                result.ended.addBoth(lambda _r: self._in_flight.done(target, child))
            return result
        except ChildConnectionLost:
            # Its connections close a few ms before its exit is seen, and its port may still
            # accept: without this the next request would go to the dying process too.
            target.suspect_until = self._clock.seconds() + SUSPECT_SECONDS
            raise
        finally:
            if not streaming:
                self._in_flight.done(target, child)

    async def each_ready_target(self, server, call):
        """``await call(target)`` on every ready target; 503 when none is ready."""
        targets = [t for t in server.targets if t.active and self.target_ready(t)]
        if not targets:
            raise self.unavailable(server)
        try:
            return await defer.gatherResults([defer.Deferred.fromCoroutine(call(t)) for t in targets])
        except defer.FirstError as exc:
            raise ServiceUnavailable('server {!r} did not answer: {}'.format(
                server.name, exc.subFailure.getErrorMessage())) from None
