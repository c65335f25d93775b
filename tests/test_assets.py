"""What the gateway serves as files: only the listed ones, with their content types; /docs
says what to install when Swagger UI's package is missing (through the real routes, on
StubTreq)."""

import sys

from treq.testing import StubTreq
from twisted.internet.task import Clock

from bis_twisted.gateway.assets import Assets
from bis_twisted.gateway.routes import Gateway


class NoFleet:
    servers = {}
    endpoints_dir = '.'


def answer(stub, path, **kwargs):
    from twisted.internet import defer

    done = []
    d = stub.get('http://gw' + path, **kwargs)
    d.addCallback(lambda r: defer.gatherResults([defer.succeed(r), r.content()]))
    d.addCallback(done.append)
    stub.flush()
    [(response, body)] = done
    return response.code, response.headers.getRawHeaders(b'content-type', [b''])[0].decode(), body


def stub_gateway():
    return StubTreq(Gateway(NoFleet(), reactor=Clock()).resource())


def test_listed_files_are_served_with_their_types_and_nothing_else():
    stub = stub_gateway()
    code, kind, body = answer(stub, '/static/uplot/uPlot.iife.min.js')
    assert code == 200 and kind.startswith('application/javascript') and body.startswith(b'/*! https://github.com/leeoniya/uPlot')
    code, kind, body = answer(stub, '/static/uplot/uPlot.min.css')
    assert code == 200 and kind.startswith('text/css')
    code, kind, body = answer(stub, '/docs')
    assert code == 200 and kind.startswith('text/html') and b'SwaggerUIBundle' in body and b'validatorUrl: null' in body
    code, kind, body = answer(stub, '/docs/swagger-ui-bundle.js')
    assert code == 200 and kind.startswith('application/javascript') and len(body) > 100_000
    for path in ('/docs/index.html', '/docs/swagger-initializer.js', '/static/uplot/other.js', '/docs/..%2Fsetup.py'):
        code, kind, body = answer(stub, path)
        assert code == 404 and kind == 'application/json', (path, code)


def test_docs_with_a_slash_redirects_to_docs():
    stub = stub_gateway()
    code, _, _ = answer(stub, '/docs/', allow_redirects=False)
    assert code == 302


def test_docs_without_swagger_ui_bundle_answers_404_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'swagger_ui_bundle', None)
    assert Assets().get('docs', 'swagger-ui-bundle.js') is None
    code, kind, body = answer(stub_gateway(), '/docs')
    assert code == 404 and b'pip install swagger-ui-bundle' in body
    code, _, _ = answer(stub_gateway(), '/static/uplot/uPlot.min.css')
    assert code == 200  # the status page's files do not depend on it
