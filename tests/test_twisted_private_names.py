"""The private Twisted names bis_twisted relies on (all in ``bis_twisted.shared.twisted_private``)
still exist with the shape it uses.

When a Twisted release moves or renames one, this fails loudly instead of the proxy or the
bad-request answer breaking at run time.
"""
import ast
import os
import inspect
import pathlib

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web import client as web_client
from twisted.web import http
from twisted.web.client import URI

from bis_twisted.shared import twisted_private

PACKAGE = pathlib.Path(twisted_private.__file__).resolve().parent.parent


def test_standard_endpoint_factory_builds_an_endpoint_for_a_uri():
    factory = web_client._StandardEndpointFactory
    params = list(inspect.signature(factory).parameters)
    assert params == ['reactor', 'contextFactory', 'connectTimeout', 'bindAddress']
    assert twisted_private.standard_endpoint(MemoryReactorClock(), URI.fromBytes(b'https://127.0.0.1:9/'), 5) \
        is not None


def test_the_quiet_pool_builds_the_quiet_factory():
    assert isinstance(web_client._HTTP11ClientFactory, type)
    assert web_client.HTTPConnectionPool._factory is web_client._HTTP11ClientFactory
    pool = twisted_private.QuietHTTPConnectionPool(MemoryReactorClock(), persistent=True)
    assert pool._factory is twisted_private.QuietHTTP11ClientFactory
    assert twisted_private.QuietHTTP11ClientFactory.noisy is False


def test_http_channel_still_calls_the_bad_request_hook():
    assert callable(getattr(http.HTTPChannel, '_respondToBadRequestAndDisconnect'))
    called = []

    class Channel(twisted_private.BadRequestHookChannel):
        def bad_request(self):
            called.append(True)
            self.transport.loseConnection()

    channel = Channel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b'GET / HTTP/1.1\r\nno colon here\r\n\r\n')  # a malformed header line
    assert called == [True]


def test_no_other_module_names_a_private_twisted_attribute():
    # a private name is one that starts with "_" reached through a twisted module or class
    found = []
    for path in PACKAGE.rglob('*.py'):
        if path.name == 'twisted_private.py':
            continue
        tree = ast.parse(path.read_text(encoding='utf-8'))
        twisted_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('twisted'):
                twisted_names.update(alias.asname or alias.name for alias in node.names)
                found.extend('{}: {}'.format(path.name, alias.name) for alias in node.names
                             if alias.name.startswith('_'))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith('_') and not node.attr.startswith('__') \
                    and isinstance(node.value, ast.Name) and node.value.id in twisted_names:
                found.append('{}: {}.{}'.format(path.name, node.value.id, node.attr))
    assert found == []


def test_the_lean_dispatch_serves_events_and_logs_what_escapes():
    from twisted.internet import epollreactor
    from twisted.python import log as legacy_log

    for name in ('_poller', '_selectables', '_doReadOrWrite', 'doPoll'):
        assert name in vars(epollreactor.EPollReactor) or hasattr(epollreactor.EPollReactor(), name)
    reactor = epollreactor.EPollReactor()
    assert twisted_private.lean_dispatch(reactor) is True
    assert vars(reactor)['doIteration'] is vars(reactor)['doPoll']
    assert twisted_private.lean_dispatch(reactor) is False  # once only
    assert twisted_private.lean_dispatch(MemoryReactorClock()) is False  # not the epoll reactor: left alone

    read_fd, write_fd = os.pipe()
    got, errors = [], []

    class Reader:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

        def logPrefix(self):
            return 'Reader'

        def doRead(self):
            got.append(os.read(self.fd, 100))

        def connectionLost(self, reason):
            got.append('lost')

    reader = Reader(read_fd)
    reactor.addReader(reader)
    os.write(write_fd, b'ping')
    reactor.doIteration(1)
    assert got == [b'ping']  # dispatched by the lean loop

    # a handler that raises is still logged and its connection dropped, as before
    observer = errors.append
    legacy_log.addObserver(observer)
    try:
        broken = Reader(read_fd)
        broken.doRead = lambda: 1 / 0
        reactor.removeReader(reader)
        reactor.addReader(broken)
        os.write(write_fd, b'x')
        reactor.doIteration(1)
    finally:
        legacy_log.removeObserver(observer)
        reactor.removeAll()
        os.close(read_fd)
        os.close(write_fd)
    assert any(event.get('isError') for event in errors)
    assert got[-1] == 'lost'
