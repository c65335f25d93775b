"""The gateway's access log: one line per request, written when its answer is done.

``AccessLog`` is the site's ``log`` (twisted.web calls it as each request finishes); each
line is a ``twisted.logger`` event in the ``bis_twisted.access`` namespace whose fields are
the request's facts (``client``, ``method``, ``path``, ``signature``, ``status``, ``bytes``,
``elapsed_ms``, ``request_id``; all but the id also together as ``access``), so a JSON
observer writes them as fields and the text one as::

    access 127.0.0.1 POST /run iris_classifier 200 412B 3.1ms rid=5f0c...

``ACCESS_LOG: false`` in the config turns it off (``enabled``). The path is logged without
its query string: a query may carry a key. ``Stamped`` marks when the request reached the
gateway's routes, for ``elapsed_ms``.
"""

import time

from twisted.logger import LogLevel, Logger
from twisted.web.resource import Resource

from ..protocol import REQUEST_ID_HEADER
from ..shared.logformat import LINE_FORMAT

_STARTED = '_bis_started'
_SIGNATURE = '_bis_signature'


def remember_signature(request, signature):
    """Note the ``SIGNATURE`` a request named, for its access-log line."""
    setattr(request, _SIGNATURE, signature)


class Stamped(Resource):
    """Wraps the gateway's resource: notes the time each request is handed to it."""

    isLeaf = True

    def __init__(self, wrapped, clock):
        Resource.__init__(self)
        self._wrapped = wrapped
        self._clock = clock

    def render(self, request):
        setattr(request, _STARTED, self._clock.seconds())
        return self._wrapped.render(request)


class AccessLog:
    """Callable as ``site.log``: one event per finished request (when ``enabled``)."""

    def __init__(self, clock, enabled=True):
        self._clock = clock
        self.enabled = enabled
        self.lines = 0
        # one Logger (a class attribute would make one per line: Logger is a descriptor)
        self._log = Logger(namespace='bis_twisted.access', source=self)

    def __call__(self, request):
        if not self.enabled:
            return
        started = getattr(request, _STARTED, None)
        elapsed_ms = None if started is None else (self._clock.seconds() - started) * 1000.0
        address = request.getClientAddress()
        client = getattr(address, 'host', None) or 'unix'
        rid = getattr(request, '_bis_request_id', None) or _header(request.responseHeaders, REQUEST_ID_HEADER) or '-'
        method, path = _text(request.method), _text(request.path)
        signature = getattr(request, _SIGNATURE, None) or '-'
        self.lines += 1
        status, size = request.code, request.sentLength
        # the text is made here, and the event's format is that one field: twisted.logger's
        # own formatting of nine fields cost ~10 us more per observer
        line = 'access %s %s %s %s %s %sB %sms rid=%s' % (
            client, method, path, signature, status, size, '-' if elapsed_ms is None else '%.1f' % elapsed_ms, rid)
        facts = {'client': client, 'method': method, 'path': path, 'signature': signature, 'status': status,
                 'bytes': size, 'elapsed_ms': elapsed_ms}
        # the facts one by one (a JSON observer that writes every field), together under
        # "access" (one that writes named fields), the request id and endpoint under the names
        # the other log lines use, and Logger.info's own fields, made here: its check of the
        # level (a walk of LogLevel's constants) was a sixth of the line's cost
        log = self._log
        self._log.observer({
            **facts, 'access_line': line, 'access': facts, 'request_id': rid,
            'endpoint': signature if signature != '-' else None, 'log_logger': log, 'log_level': LogLevel.info,
            'log_namespace': log.namespace, 'log_source': self, 'log_format': LINE_FORMAT, 'log_time': time.time()})


def _header(headers, name):
    values = headers.getRawHeaders(name)
    return _text(values[0]) if values else None


def _text(value):
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)
