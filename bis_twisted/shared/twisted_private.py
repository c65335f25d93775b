"""Every private Twisted name bis_twisted relies on, and why: Twisted offers no public hook
for these. ``setup.py`` bounds Twisted's version to the releases the tests ran on, and
``tests/test_twisted_private_names.py`` fails loudly when a release moves one of them.
Nothing else in bis_twisted imports a private Twisted name.
"""

from twisted.internet import tcp as _tcp, unix as _unix
from twisted.python import log as _legacy_log
from twisted.web import client as _web_client
from twisted.web.http import HTTPChannel


class QuietHTTP11ClientFactory(_web_client._HTTP11ClientFactory):
    """``_HTTP11ClientFactory``: the factory ``HTTPConnectionPool`` builds per connection.
    Subclassed only to turn off its "Starting/Stopping factory" log line, one per
    connection to a child (noise at thousands per minute)."""

    noisy = False


class QuietHTTPConnectionPool(_web_client.HTTPConnectionPool):
    """``HTTPConnectionPool._factory``: the pool's only way to choose the factory above."""

    _factory = QuietHTTP11ClientFactory


def standard_endpoint(reactor, uri, connect_timeout):
    """``_StandardEndpointFactory``: the Agent's own URI -> endpoint logic (TLS with the
    browser-like policy for ``https``). An Agent built with ``usingEndpointFactory`` (ours
    caches a TCP_NODELAY endpoint per child) loses it; this gives it back for the URLs
    that are not a plain ``http`` child (a remote server behind TLS)."""
    factory = _web_client._StandardEndpointFactory(
        reactor, _web_client.BrowserLikePolicyForHTTPS(), connect_timeout, None)
    return factory.endpointForURI(uri)


class BadRequestHookChannel(HTTPChannel):
    """``HTTPChannel._respondToBadRequestAndDisconnect``: twisted.web's only hook for the
    bare ``400 Bad Request`` it writes on a malformed request line, header or form body.
    Overridden to call ``bad_request()``, which a subclass defines (a JSON answer)."""

    def _respondToBadRequestAndDisconnect(self):
        self.bad_request()

    def bad_request(self):
        HTTPChannel._respondToBadRequestAndDisconnect(self)


_SOCKETS = (_tcp.Server, _tcp.Client, _unix.Server, _unix.Client)  # the transports send_now writes to itself


def send_now(transport, data):
    """Write ``data`` to a TCP or Unix socket ``transport`` as the send it would make later, but now:
    ``FileDescriptor.write`` only buffers, registers the socket for writing (an
    ``epoll_ctl``), and sends when the reactor next polls, then unregisters it (another
    ``epoll_ctl``). When nothing of the transport's is waiting to go (``dataBuffer``,
    ``_tempDataBuffer``), the socket is writable in the common case and ``send`` takes it
    all; what it does not take, and everything on any other transport (TLS, a test's, a Unix
    socket with file descriptors to pass), is written the ordinary way, so order, producers and
    errors stay the transport's."""
    if (type(transport) in _SOCKETS and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport.dataBuffer and not transport._tempDataBuffer
            and not getattr(transport, '_sendmsgQueue', None)):
        try:
            sent = transport.socket.send(data)
        except OSError:  # would block, or the connection is broken: the transport's own write finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def lean_dispatch(reactor):
    """``EPollReactor.doPoll`` (the reactor's ``doIteration``), for ``reactor`` when it is the
    epoll one: the same loop, without ``log.callWithLogger`` around each ready descriptor.
    That wrapper asks the selectable for its ``logPrefix()`` and pushes a copy of the legacy
    log context on every event (a few microseconds each, a request's read among them) only so
    a legacy ``log.msg`` made inside knows its "system"; bis_twisted logs through
    ``twisted.logger``, which does not read that context. ``_doReadOrWrite`` still logs what
    a ``doRead``/``doWrite`` raises and drops that connection; what escapes it is logged
    here, as the wrapper logged it. Returns whether it replaced the loop."""
    from twisted.internet import epollreactor
    if type(reactor) is not epollreactor.EPollReactor or 'doIteration' in vars(reactor):
        return False
    poll, selectables, handle = reactor._poller.poll, reactor._selectables, reactor._doReadOrWrite

    def do_poll(timeout):
        try:
            events = poll(-1 if timeout is None else timeout, len(selectables))
        except InterruptedError:
            return
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                try:
                    handle(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    _legacy_log.err(system='bis_twisted.lean_dispatch')

    reactor.doIteration = reactor.doPoll = do_poll
    return True
