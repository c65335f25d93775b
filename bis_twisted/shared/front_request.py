"""``FrontRequest``: a request on ``FrontChannel`` to one of its site's ``lean_paths`` (the
gateway's ``/run``), answered without twisted.web's ``Request``.

twisted.web's ``Request`` keeps its headers in ``Headers`` objects (each name encoded and
checked, each value checked, on every get and set), sets ``Server`` and ``Date`` and a
default content type, walks the resource tree, and finishes through several layers: a third
of the gateway's own work per ``/run`` in a profile. This request keeps the request headers
as llhttp gave them and the answer's in a dict, and writes the answer's head itself, with the
same bytes on the wire: the status line, the headers the routes set (names in twisted.web's
``Header-Case``), ``Server`` and ``Date``, then the body (``Content-Length``), or chunks when
the route set no length (a stream; close-delimited on HTTP/1.0).

What the routes, the access log, the API keys, tracing and the rollouts read of a request is
here with twisted.web's meaning: ``method``, ``uri``, ``path``, ``args``, ``content``,
``getHeader``, ``setHeader``, ``setResponseCode``, ``code``, ``write``, ``finish``,
``notifyFinish``, ``registerProducer``, ``getClientAddress``, ``channel``, ``sentLength``,
``finished``, ``requestHeaders`` and ``responseHeaders`` (copies, for reading). The body
counts against the site's caps (``BodyBudget``) as ``LimitedRequest``'s does.
"""

import io
import time
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import OK, RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, version as SERVER_VERSION

from .limits import BodyBudget
from .web import write_json

_NO_BODY = (204, 304)
_CANONICAL = {}  # a header name as given -> its Header-Case, as twisted.web writes it
_DATE = [None, b'']  # (second, the Date header's value)


def _canonical(name):
    try:
        return _CANONICAL[name]
    except KeyError:
        raw = name.encode('iso-8859-1') if isinstance(name, str) else name
        if len(_CANONICAL) > 1000:  # names a route sets: a handful; never grows with what clients send
            _CANONICAL.clear()
        canonical = _CANONICAL[name] = Headers({raw: [b'']}).getAllRawHeaders().__next__()[0]
        return canonical


def _date(now):
    second = int(now)
    if _DATE[0] != second:
        _DATE[0], _DATE[1] = second, datetimeToString(second)
    return _DATE[1]


def _value(value):
    value = value.encode('utf-8') if isinstance(value, str) else value
    if b'\n' in value or b'\r' in value:  # as twisted.web: no header line can be split in two
        value = b' '.join(value.splitlines())
    return value


class FrontRequest:
    """One request on ``channel`` (a ``FrontChannel``) whose head is ``method``, ``uri``,
    ``version`` (``b'HTTP/1.1'``) and ``headers`` (``[(name, value)]`` as received)."""

    _log = Logger()

    code = OK
    code_message = b'OK'
    finished = False
    startedWriting = False
    sentLength = 0
    chunked = False
    producer = None
    _disconnected = False

    def __init__(self, channel, method, uri, version, headers):
        self.channel = channel
        self.site = channel.site
        self.method = method
        self.uri = uri
        self.path = uri.split(b'?', 1)[0]
        self.clientproto = version
        self._headers = headers
        self._lookup = None  # lower-cased name -> [values], made on the first getHeader
        self._answer = {}  # lower-cased name -> (Header-Case name, value)
        self._notifications = []
        self._args = None
        self.content = None
        self._budget = BodyBudget(channel.site)

    # -- the request --------------------------------------------------------------------------------
    def getHeader(self, name):
        lookup = self._lookup
        if lookup is None:
            lookup = self._lookup = {}
            for key, value in self._headers:
                lookup.setdefault(key.lower(), []).append(value)
        if isinstance(name, str):
            values = lookup.get(name.encode('iso-8859-1').lower())
            return values[-1].decode('utf-8') if values else None
        values = lookup.get(name.lower())
        return values[-1] if values else None

    @property
    def requestHeaders(self):
        headers = Headers()
        for name, value in self._headers:
            headers.addRawHeader(name, value)
        return headers

    @property
    def args(self):
        if self._args is None:
            query = self.uri.split(b'?', 1)
            self._args = parse_qs(query[1], keep_blank_values=True) if len(query) == 2 else {}
        return self._args

    def getClientAddress(self):
        return self.channel.getPeer() if self.channel is not None else None

    def getHost(self):
        return self.channel.getHost()

    def isSecure(self):
        return False

    # -- what FrontChannel calls ----------------------------------------------------------------------
    def refusal(self, length):
        return self._budget.refusal(length)

    def gotLength(self, length):
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        if self._budget.take(data, self):
            self.content.write(data)

    def requestReceived(self, method, uri, version):
        """The body is in: the site's resource answers it, as twisted.web's ``render`` would."""
        if self._budget.refused:
            return
        # as twisted.web's process(): these two first, in the order it writes them
        answer = self._answer
        answer[b'server'] = (b'Server', SERVER_VERSION)
        answer[b'date'] = (b'Date', _date(time.time()))
        self.content.seek(0)
        try:
            body = self.site.resource.render(self)
        except Exception:  # noqa: BLE001 - answered, as twisted.web's processingFailed does, but in JSON
            self._failed(Failure())
            return
        if body is not NOT_DONE_YET:
            self.write(body)
            self.finish()

    def _failed(self, failure):
        self._log.failure('unexpected error answering {method} {path}', failure, method=self.method, path=self.path)
        if self.startedWriting or self.finished or self._disconnected:
            return
        self.write(write_json(self, 500, {'ERROR': 'internal error: {}'.format(failure.type.__name__)}))
        self.finish()

    def connectionLost(self, reason):
        self._disconnected = True
        self.channel = None
        self._budget.release()
        notifications, self._notifications = self._notifications, []
        for _done, lost in notifications:
            lost(reason)

    # -- the answer ---------------------------------------------------------------------------------
    def setResponseCode(self, code, message=None):
        if not isinstance(code, int):
            raise TypeError('HTTP response code must be int or long')
        self.code = code
        self.code_message = message if message is not None else RESPONSES.get(code, b'Unknown Status')

    def setHeader(self, name, value):
        self._answer[name.lower()] = (_canonical(name), _value(value))

    @property
    def responseHeaders(self):
        headers = Headers()
        for name, value in self._answer.values():
            headers.addRawHeader(name, value)
        return headers

    def notifyFinish(self):
        if self.finished:
            return defer.succeed(None)
        waiting = defer.Deferred()
        self._notifications.append((waiting.callback, waiting.errback))
        return waiting

    def when_finished(self, call):
        """``notifyFinish`` without a Deferred: ``call(None)`` once the answer is written
        whole, ``call(reason)`` (a Failure) when the connection is lost first."""
        if self.finished:
            call(None)
        else:
            self._notifications.append((call, call))

    def write(self, data):
        if self.finished:
            raise RuntimeError('Request.write called on a request after Request.finish was called.')
        if self._disconnected:
            return
        if not self.startedWriting:
            self.startedWriting = True
            head = self._head()
            if self.code in _NO_BODY:
                self.channel.write(head)
                return
            if self.chunked and data:
                self.channel.write(head + b'%x\r\n' % len(data) + data + b'\r\n')
            else:
                self.channel.write(head + data)
            self.sentLength += len(data)
            return
        if not data or self.code in _NO_BODY:
            return
        self.sentLength += len(data)
        if self.chunked:
            self.channel.write(b'%x\r\n' % len(data) + data + b'\r\n')
        else:
            self.channel.write(data)

    def _head(self):
        answer = self._answer
        lines = [self.clientproto, b' ', b'%d' % self.code, b' ', self.code_message, b'\r\n']
        for name, value in answer.values():
            lines += (name, b': ', value, b'\r\n')
        if b'content-length' not in answer and self.code not in _NO_BODY:
            if self.clientproto == b'HTTP/1.1':
                self.chunked = True
                lines.append(b'Transfer-Encoding: chunked\r\n')
            else:
                self.channel.persistent = False  # the body ends when the connection does
        lines.append(b'\r\n')
        return b''.join(lines)

    def finish(self):
        if self._disconnected:
            raise RuntimeError('Request.finish called on a request after its connection was lost; use '
                               'Request.notifyFinish to keep track of this.')
        if self.finished:
            return
        if not self.startedWriting:
            if b'content-length' not in self._answer and self.code not in _NO_BODY:
                self.setHeader(b'Content-Length', b'0')
            self.write(b'')
        if self.chunked:
            self.channel.write(b'0\r\n\r\n')
        self.site.log(self)
        self.finished = True
        self._budget.release()
        if self.producer is not None:
            self.unregisterProducer()
        channel, self.channel = self.channel, None
        channel.requestDone(self)
        self.content = None
        notifications, self._notifications = self._notifications, []
        for done, _lost in notifications:
            done(None)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise ValueError('registering producer {!r} before previous one ({!r}) was unregistered'.format(
                producer, self.producer))
        self.producer = producer
        self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self.channel is not None:
            self.channel.unregisterProducer()
        self.producer = None
