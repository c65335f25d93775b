"""HTTP plumbing shared by the gateway and the model server: reading a request's inputs,
writing JSON answers, turning our errors (and Klein's routing errors) into ``{"ERROR": ...}``.
"""

import base64
import email
import email.errors
import email.policy
import email.utils
import io
import json
import math
import os
import re
import sys
import time
from typing import Any, Dict, Optional
from urllib.parse import parse_qsl, unquote_to_bytes

import attr
import orjson
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException

from ..errors import BadRequest, BisError
from ..protocol import DEFAULT_MAX_BODY_MB, REQUEST_ID_HEADER
from .limits import MIB, GuardedSite, Limits

# Twisted's default backlog is 50: a burst of new connections past it waits for SYN retries
LISTEN_BACKLOG = 1024

_log = Logger()

JSON_TYPE = b'application/json'
SSE_TYPE = b'text/event-stream'


@attr.s(frozen=True, auto_attribs=True)
class Answer:
    """An HTTP status and the JSON object to answer with: what a worker's call produced (in
    the model server), or what a model server answered (in the gateway)."""

    status: int
    body: Dict[str, Any]
    batch_size: int = 1  # how many requests ran in the same _predict call
    raw: Optional[bytes] = None  # a model server's answer already complete: its bytes, not decoded


_NOW_TEXT = (None, '')  # (whole second, its local time text), replaced whole


def now_text():
    """The local time to the second, as every answer's ``time`` field has it: made once a
    second, not once an answer (a local time, and the clock's shifts, change on a second)."""
    global _NOW_TEXT
    second = int(time.time())
    cached = _NOW_TEXT
    if cached[0] != second:
        cached = _NOW_TEXT = (second, time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(second)))
    return cached[1]


def _json_default(value):
    # numpy scalars and arrays, sets, bytes: what a model's answer commonly holds
    if hasattr(value, 'tolist'):
        return value.tolist()
    if hasattr(value, 'item'):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode('ascii')
    raise TypeError('{} is not JSON serializable'.format(type(value).__name__))


# numpy arrays and scalars natively; what orjson would write otherwise than json does
# (datetimes, dataclasses) goes through _json_default, which refuses it as json does
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(body: Any) -> bytes:
    """``body`` as compact JSON bytes; numpy values, sets and bytes included, NaN refused.

    ``orjson`` writes it (about a tenth of the time of the standard library); what it cannot
    write as ``json`` would (keys that are not strings, integers past 64 bits, nesting past
    its limit) and any answer holding ``null`` (orjson writes NaN and infinities as null,
    where they must be refused) go through ``json``, so the answers and the errors are the
    same as with ``json`` alone."""
    try:
        data = orjson.dumps(body, default=_json_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: json decides, and says why
        data = None
    if data is None or b'null' in data:
        data = json.dumps(body, default=_json_default, allow_nan=False, separators=(',', ':')).encode('utf-8')
    return data


def dumps_spaced(body: Any) -> bytes:
    """``body`` as the standard library writes it, ``": "`` and ``", "`` included: a stream's
    chunks, which clients may read as text, keep the bytes they always had."""
    return json.dumps(body, default=_json_default, allow_nan=False).encode('utf-8')


def write_encoded_json(request, status, data, headers=None):
    """Like ``write_json`` for a body already encoded (a model server's complete answer)."""
    request.setResponseCode(status)
    request.setHeader(b'Content-Type', JSON_TYPE)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b'Content-Length', b'%d' % len(data))
    return data


def encode_answer(status, body):
    """``(status, bytes)`` of an answer: ``body`` encoded, or a 500 whose ``ERROR`` says why
    it could not be."""
    try:
        return status, dumps(body)
    except (TypeError, ValueError) as exc:
        return 500, dumps({'ERROR': 'the answer could not be encoded as JSON: {}'.format(exc)})
    except RecursionError:
        depth, limit = nesting_depth(body), sys.getrecursionlimit()
        return 500, dumps({'ERROR': 'the answer is nested {} levels deep, deeper than JSON encoding allows here '
                                    '(about {}); return a flatter structure'.format(depth, limit)})


def write_json(request, status, body, headers=None):
    """Set status and headers and return the encoded body (what a Klein route returns).

    With its ``Content-Length`` set, the answer goes out in one piece: without it twisted.web
    sends it chunked, and the reader (the gateway, for a model server's answer) parses chunk
    framing and a trailer for every answer."""
    status, data = encode_answer(status, body)
    return write_encoded_json(request, status, data, headers)


def nesting_depth(value, stop=10_000_000):
    """How deep lists and dicts nest in ``value`` (measured without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest < stop:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, (list, tuple)):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json_object(raw):
    """``raw`` bytes -> dict, or BadRequest saying what is wrong."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise BadRequest('request body is not UTF-8 text; send a JSON object') from None
    value = _fast_loads(raw)
    if value is _SLOW:
        value = _slow_loads(text)
    if not isinstance(value, dict):
        raise BadRequest('request body must be a JSON object, not {}'.format(type(value).__name__))
    return value


_SLOW = object()
_LONG_NUMBER = re.compile(rb'\d{19}')
# orjson reads nesting ~1000 deep, deeper than json (and what handles the value after it) can
# go: a body that may nest that deep is json's, which refuses it with 400 as it always did
_FAST_BRACKETS = 512


def _fast_loads(raw):
    """``raw`` decoded by ``orjson``, or ``_SLOW`` where ``json`` must decide: a body it
    refuses (the error message is ``json``'s), one with a run of 19 digits or more (``orjson``
    reads an integer past 64 bits as a float; ``json`` keeps it exact) and one with more than
    ``_FAST_BRACKETS`` brackets (it may nest deeper than ``json`` reads). ``orjson``
    refuses NaN, Infinity and numbers out of a double's range, as ``_slow_loads`` does."""
    if _LONG_NUMBER.search(raw) is not None or raw.count(b'[') + raw.count(b'{') > _FAST_BRACKETS:
        return _SLOW
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SLOW


def loads_encoded(data):
    """What ``dumps`` wrote, read back (an answer checked against a schema): by ``orjson``
    where it reads it as ``json`` does (``_fast_loads``), else by ``json``."""
    value = _fast_loads(data)
    return json.loads(data) if value is _SLOW else value


def _slow_loads(text):
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise BadRequest('request body is not valid JSON ({}); send a JSON object like '
                         '{{"SIGNATURE": "<endpoint>", ...}}'.format(str(exc)[:120])) from None
    return value


def _reject_constant(name):
    # Python's json accepts NaN and Infinity; JSON does not, and they cannot be sent on
    raise ValueError('{} is not a JSON value'.format(name))


def _finite_float(text):
    value = float(text)
    if math.isinf(value):  # 1e400: valid JSON syntax, but no JSON encoder can send it on
        raise ValueError('{} is out of the range of a double'.format(text[:40]))
    return value


def request_inputs(request):
    """The request's inputs as a dict: a JSON body, a form post, or the query arguments
    (GET), as the original accepted all three. Query arguments fill in keys the body lacks."""
    content_type = (request.getHeader(b'content-type') or b'').split(b';')[0].strip().lower()
    request.content.seek(0)
    raw = request.content.read()
    inputs = {}
    json_body = raw.lstrip()[:1] in (b'{', b'[')
    if json_body:
        # JSON whatever the content type says: `curl -d '{...}'` labels it a form post
        inputs = parse_json_object(raw)
    elif content_type.startswith(b'multipart/form-data'):
        inputs = multipart_fields(raw, request.getHeader(b'content-type'))
    elif content_type == b'application/x-www-form-urlencoded':
        inputs = {k: v for k, v in parse_qsl(_text(raw), keep_blank_values=True)}
    elif raw.strip():
        inputs = parse_json_object(raw)
    query = request.uri.split(b'?', 1)
    added = False
    if len(query) == 2:
        for key, value in query_inputs(_text(query[1])).items():
            added = added or key not in inputs
            inputs.setdefault(key, value)
    # the body as it came, when it says all the inputs say: sent on as it is (no second copy)
    request._bis_json_body = raw if json_body and not added else None
    return inputs


def query_inputs(query):
    """The query arguments as inputs: each value is its JSON when it parses as JSON
    (``INPUT_VALUE=7`` -> 7, ``FEATURES=[5.1,3.5]`` -> a list), else the text; a key given
    more than once becomes a list. ``SIGNATURE`` and the inputs named in ``BASE64_KEYS`` stay
    text (a base64 string may look like a number)."""
    grouped = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(key, []).append(value)
    inputs = {key: [_query_value(v) for v in values] for key, values in grouped.items()}
    keys = inputs.get('BASE64_KEYS', [])
    keys = [k for v in keys for k in (v if isinstance(v, list) else [v])]
    for key, values in grouped.items():
        if key == 'SIGNATURE' or key in keys:
            inputs[key] = values
    return {key: values[0] if len(values) == 1 else values for key, values in inputs.items()}


def _query_value(text):
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return text


def multipart_fields(raw, content_type):
    """The fields of a multipart/form-data body. Parsed here, not by twisted.web (which
    the sites are told not to): its parser failed on RFC 2231 field names
    (``name*=utf-8''...``) and dropped the connection without an answer. A file part comes
    as base64 text and is named in ``BASE64_KEYS`` (with ``ENCODING`` ``binary`` unless the
    form sets one), so the worker receives its bytes."""
    try:
        message = email.message_from_bytes(b'Content-Type: ' + content_type + b'\r\n\r\n' + raw,
                                           policy=email.policy.HTTP)
        if not message.is_multipart():
            raise ValueError('no parts')
        fields, files = {}, []
        for part in message.iter_parts():
            name = part.get_param('name', header='content-disposition')
            if name is None:
                continue
            name = email.utils.collapse_rfc2231_value(name)
            payload = part.get_payload(decode=True) or b''
            if part.get_filename() is not None:
                fields[name] = base64.b64encode(payload).decode('ascii')
                files.append(name)
            else:
                fields[name] = payload.decode(part.get_content_charset() or 'utf-8', 'replace')
    except (ValueError, TypeError, LookupError, AttributeError, email.errors.MessageError) as exc:
        raise BadRequest('multipart/form-data body that does not parse ({}); send a JSON object'.format(
            type(exc).__name__)) from None
    if files:
        fields['BASE64_KEYS'] = files
        fields.setdefault('ENCODING', 'binary')  # a file reaches the worker as its bytes
    return fields


def forward_payload(inputs):
    """The inputs as the JSON sent on to a model server: compact UTF-8, so a body under the
    gateway's limit does not grow past the server's by escaping (``é`` is 2 bytes, ``\\u00e9`` 6)."""
    try:
        return json.dumps(inputs, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
    except UnicodeEncodeError:
        raise BadRequest('the request holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode') from None


def forward_body(request, inputs):
    """What to send a model server for ``inputs`` read by ``request_inputs``: the client's
    JSON body itself when it holds them all (a large body is then held once, not twice),
    else ``forward_payload(inputs)``. A body with ``\\u`` escapes is re-encoded, so a lone
    surrogate is refused here as before."""
    raw = getattr(request, '_bis_json_body', None)
    if raw is not None and b'\\u' not in raw:
        return raw
    return forward_payload(inputs)


def forget_body(request):
    """Drop the request's body (the bytes ``request_inputs`` kept, the buffer it was read
    from) once it has been used."""
    request._bis_json_body = None
    content = getattr(request, 'content', None)
    if content is not None:
        content.close()
        request.content = io.BytesIO()


_REQUEST_ID_OK = re.compile(rb'^[A-Za-z0-9._:-]{1,128}$')


_RANDOM = []  # os.urandom bytes not used yet: 16 of them per request id
os.register_at_fork(after_in_child=_RANDOM.clear)  # a forked process draws its own


def _random_id():
    """A version-4 UUID's hex, as ``uuid.uuid4().hex`` (a tenth of its time), from the
    same source (``os.urandom``) read 4 KiB at a time: one system call per 256 ids."""
    if not _RANDOM:
        block = os.urandom(4096)
        _RANDOM.extend(block[i:i + 16] for i in range(4080, -1, -16))
    data = bytearray(_RANDOM.pop())
    data[6] = (data[6] & 0x0F) | 0x40
    data[8] = (data[8] & 0x3F) | 0x80
    return data.hex()


def request_id_of(request):
    """The request's id: the client's ``X-Request-Id`` when it is a sane token, else one
    made here; set once, sent back as a header."""
    rid = getattr(request, '_bis_request_id', None)
    if rid is None:
        given = request.getHeader(REQUEST_ID_HEADER)
        rid = given.decode('ascii') if given and _REQUEST_ID_OK.match(given) else _random_id()
        request._bis_request_id = rid
        request.setHeader(REQUEST_ID_HEADER, rid.encode('ascii'))
    return rid


def _text(value):
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else value


def error_answer(request, failure, extra_fields=None):
    """The body and status for a failure raised by a route: ours carry their status; Klein's
    routing errors (404, 405) keep theirs; anything else is a 500 without a traceback."""
    exc = failure.value
    if isinstance(exc, BisError):
        body = {'ERROR': exc.message}
        body.update(exc.extra)
        headers = {}
        if exc.retry_after is not None:
            headers[b'Retry-After'] = str(exc.retry_after).encode('ascii')
        status = exc.status
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        body = {'ERROR': '{} {}: {}'.format(status, exc.name, request.path.decode('utf-8', 'replace'))}
        headers = {}
    else:
        _log.failure('unexpected error answering {method} {path}', failure,
                     method=request.method, path=request.path)
        status, body, headers = 500, {'ERROR': 'internal error: {}'.format(type(exc).__name__)}, {}
    if extra_fields:
        body.update(extra_fields())
    return write_json(request, status, body, headers)


class Utf8PathGuard(Resource):
    """Answers a path whose %-escapes are not UTF-8 (``/%ff``) with a JSON 400. Klein
    refuses such a path before routing, so our error handlers never see it, and it answers
    text/html and logs a traceback per request."""

    isLeaf = True

    def __init__(self, wrapped):
        Resource.__init__(self)
        self._wrapped = wrapped

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode('utf-8')
        except UnicodeDecodeError:
            return write_json(request, 400, {'ERROR': 'the URL path is not UTF-8 once %-decoded'})
        return self._wrapped.render(request)


def make_site(resource, max_body_mb=DEFAULT_MAX_BODY_MB, access_log=False, limits=None, gateway_fields=None,
              channel=None):
    """A ``GuardedSite`` (deadlines, connection and body caps: see limits.py) and, by
    default, no access log: one log line per request costs more than routing it. HTTP/1.1
    only: no HTTP/2 negotiation on plain TCP anyway. ``gateway_fields(request)``: the fields
    the answers the site writes itself (413, 503 for bodies) carry. ``channel``: the class of its
    connections (``GuardedChannel`` unless given: front.py's ``FRONTS``)."""
    if limits is None:
        limits = Limits(max_body=int(max_body_mb * MIB))
    site = GuardedSite(Utf8PathGuard(resource), limits, parsePOSTFormSubmission=False)
    site.gateway_fields = gateway_fields
    if channel is not None:
        site.protocol = channel
    site.noisy = False
    if not access_log:
        site.log = lambda request: None
    return site
