"""The private Twisted names bis_twisted relies on still exist with the shape it uses.

When a Twisted release moves or renames one, this fails loudly instead of the proxy or the
bad-request answer breaking at run time.
"""
import inspect

from twisted.web import client as web_client
from twisted.web import http


def test_standard_endpoint_factory_builds_an_endpoint_for_a_uri():
    # proxy.py: builds the TCP endpoint for a child's URI with the pool's connect timeout.
    factory = web_client._StandardEndpointFactory
    params = list(inspect.signature(factory).parameters)
    assert params == ['reactor', 'contextFactory', 'connectTimeout', 'bindAddress']
    assert callable(getattr(factory, 'endpointForURI'))


def test_http11_client_factory_is_subclassable():
    # proxy.py: _QuietFactory subclasses it to silence per-connection log lines.
    assert isinstance(web_client._HTTP11ClientFactory, type)


def test_connection_pool_uses_a_factory_class_attribute():
    # proxy.py: _QuietPool overrides HTTPConnectionPool._factory.
    assert web_client.HTTPConnectionPool._factory is web_client._HTTP11ClientFactory


def test_http_channel_has_the_bad_request_hook():
    # limits.py: overrides it to answer a JSON 400 before disconnecting.
    assert callable(getattr(http.HTTPChannel, '_respondToBadRequestAndDisconnect'))


def test_the_proxy_builds_a_non_http_endpoint_through_it():
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import URI

    from bis_twisted.gateway import proxy

    factory = proxy._LoopbackEndpoints(MemoryReactorClock())
    assert factory.endpointForURI(URI.fromBytes(b'https://127.0.0.1:9/')) is not None
