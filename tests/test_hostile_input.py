"""Hostile input against one real gateway (``twistd -n -y bis.tac``, ``MAX_BODY_MB`` 1, the
repo's ``dummy_model_demo2`` with 2 workers): whatever a client sends, as raw bytes over
loopback, the answer is an HTTP answer; an error is a JSON object with ``ERROR``; no body
shows a traceback; no 5xx comes from the gateway itself (a 500 only from the user's hook,
with its ``DummyModelDemo2Worker_ERROR`` details); and the gateway still answers
``/health`` afterwards.

The property tests send what hypothesis makes up; the explicit tests below them pin the
edges (the body limit, chunked bodies, SIGNATURE types, invalid UTF-8) and each hostile
input found to break the contract.

Admin routes act for real (``/kill_server``, ``/shutdown``, ``/update_workers``): examples
that could name a real target there are dropped with ``assume`` (``could_act``).
"""

import collections
import http.client
import json
import math
import socket
import string
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings, strategies as st

from gateway_process import start_gateway
from procs import Processes, wait_until

MAX_BODY = 1024 * 1024  # MAX_BODY_MB 1
SERVER = 'dummy_model_demo2'
HOOK_ERROR_KEY = 'DummyModelDemo2Worker_ERROR'
CONFIG = {'MAX_BODY_MB': 1, 'NO_STARTUP_WAIT': True,
          'CONFIG_ENDPOINTS': {SERVER: {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}

ADMIN_ROUTES = ['/kill_server', '/start_server', '/update_workers', '/shutdown', '/reload_server', '/reload_config']
ROUTES = ['/run', '/list_servers', '/notifications', '/support_update_status', '/system_status',
          '/health', '/ready', '/metrics', '/openapi.json', '/'] + ADMIN_ROUTES
# what makes an admin route really act; /start_server of a running server changes nothing
ACTING_SIGNATURES = {'shutdown': (b'SAFE_KILL_SERVER_CMD',), 'kill_server': (b'*', SERVER.encode()),
                     'update_workers': (SERVER.encode(),), 'reload_server': (SERVER.encode(),)}
TRACEBACK_MARKS = (b'Traceback', b'File "')

# a handful of examples per test is HTTP over loopback, a few ms each: the whole module
# stays well under a minute; no example database is written into the checkout
HOSTILE = settings(max_examples=150, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- the gateway ----------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def gateway(tmp_path_factory, http_front):
    with Processes() as group:
        gateway = start_gateway(group, tmp_path_factory.mktemp('hostile'), config=CONFIG,
                                env={'BIS_HTTP_FRONT': http_front})
        wait_until(lambda: gateway.get('/ready'), lambda r: r.status == 200, what='/ready 200')
        gateway.server_pid = gateway.server(SERVER)['PID']
        yield gateway


# -- raw HTTP -------------------------------------------------------------------------------------
Answer = collections.namedtuple('Answer', 'status headers body')


def exchange(port, method, target, body=b'', headers=(), chunked=False, timeout=15.0):
    """Send one request exactly as given (bytes on a fresh connection) and read the answer.

    ``body=None`` sends no ``Content-Length``. A send that fails because the gateway refused
    the request early (413) is not an error: the answer is read all the same. An answer
    that never comes fails the test (``http.client`` raises).
    """
    method = method.encode('latin-1') if isinstance(method, str) else method
    target = target.encode('latin-1') if isinstance(target, str) else target
    lines = [method + b' ' + target + b' HTTP/1.1', b'Host: 127.0.0.1', b'Connection: close']
    if chunked:
        lines.append(b'Transfer-Encoding: chunked')
    elif body is not None:
        lines.append(b'Content-Length: %d' % len(body))
    for name, value in headers:
        lines.append(_bytes(name) + b': ' + _bytes(value))
    payload = body or b''
    if chunked:
        step = 64 * 1024
        payload = b''.join(b'%x\r\n%s\r\n' % (len(payload[i:i + step]), payload[i:i + step])
                           for i in range(0, len(payload), step)) + b'0\r\n\r\n'
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        try:
            sock.sendall(b'\r\n'.join(lines) + b'\r\n\r\n' + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was sent: the answer is still there to read
        response = http.client.HTTPResponse(sock, method=method.decode('latin-1'))
        response.begin()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def _bytes(value):
    return value.encode('latin-1') if isinstance(value, str) else value


def post_json(gateway, path, document, **kwargs):
    return exchange(gateway.port, 'POST', path, json.dumps(document).encode('utf-8'),
                    headers=[('Content-Type', 'application/json')], **kwargs)


def json_of(answer):
    try:
        return json.loads(answer.body.decode('utf-8'))
    except ValueError:
        raise AssertionError('answer is not JSON: {!r}'.format(answer)) from None


# -- what every answer must be ----------------------------------------------------------------
def assert_sane_answer(answer, method='POST'):
    """The contract for any answer to any input: a JSON object, an ERROR on failure."""
    for mark in TRACEBACK_MARKS:
        assert mark not in answer.body, 'traceback text in the answer: {!r}'.format(answer)
    assert answer.status not in (502, 503, 504), 'the server is up: no {} expected: {!r}'.format(
        answer.status, answer)
    assert answer.status <= 500, answer
    if method.upper() == 'HEAD':  # no body to look at
        return
    if answer.status >= 400:
        body = json_of(answer)
        assert isinstance(body, dict) and 'ERROR' in body, 'an error without ERROR: {!r}'.format(answer)
    if answer.status == 500:
        assert HOOK_ERROR_KEY in json_of(answer), 'a 500 that did not come from the worker\'s hook: {!r}'.format(
            answer)


def assert_still_serving(gateway):
    health = exchange(gateway.port, 'GET', '/health', body=None)
    assert health.status == 200, 'the gateway stopped serving: {!r}'.format(health)


def assert_server_untouched(gateway):
    """After a whole property test: the model server was never stopped or restarted."""
    answer = post_json(gateway, '/run', {'SIGNATURE': SERVER, 'INPUT_VALUE': 3})
    assert answer.status == 200, answer
    assert json_of(answer)['predict_result'] == {'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    server = gateway.server(SERVER)
    assert server['PID'] == gateway.server_pid and server['RESTARTS'] == 0, server


def could_act(method, target, body):
    """True when this request might really stop the gateway or its server (or resize it):
    a POST to an acting admin route that mentions SIGNATURE and one of the values that act.
    Deliberately wide (substrings, percent-decoded too); such examples are dropped."""
    if isinstance(method, str):
        method = method.encode('latin-1')
    if method.upper() != b'POST':
        return False
    target = _bytes(target)
    path, _, query = target.partition(b'?')
    route = unquote_to_bytes(path)
    acting = [values for name, values in ACTING_SIGNATURES.items() if name.encode() in route]
    if not acting:
        return False
    body = body or b''
    texts = [body, query, unquote_to_bytes(body), unquote_to_bytes(query),
             unquote_to_bytes(body.replace(b'+', b' ')), unquote_to_bytes(query.replace(b'+', b' '))]
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        document = None
    if isinstance(document, dict):
        texts.append(json.dumps(document.get('SIGNATURE'), ensure_ascii=False).encode('utf-8', 'replace'))
        texts.append(b'SIGNATURE' if 'SIGNATURE' in document else b'')
    mentions_signature = any(b'SIGNATURE' in text for text in texts)
    names_a_target = any(value in text for values in acting for value in values for text in texts)
    return mentions_signature and names_a_target


def send_hostile(gateway, method, target, body=b'', headers=(), chunked=False):
    assume(not could_act(method, target, body))
    # pytest-twisted wraps every test, which hides hypothesis's own report of the arguments
    note('request: {} {!r} headers={!r} chunked={} body ({} bytes)={!r}'.format(
        method, target, list(headers), chunked, len(body or b''), (body or b'')[:300]))
    answer = exchange(gateway.port, method, target, body, headers=headers, chunked=chunked)
    assert_sane_answer(answer, method)
    assert_still_serving(gateway)
    return answer


# -- strategies ------------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25)
signature_values = (st.sampled_from([SERVER, 'SAFE_KILL_SERVER_CMD', '*', 'nope', '', 'DUMMY_MODEL_DEMO2',
                                     SERVER + ' ', 'dummy_model_demo1'])
                    | json_values)
routes = st.sampled_from(ROUTES)
content_types = st.sampled_from([
    None, 'application/json', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data',
    'multipart/form-data; boundary=b', 'application/json; charset=latin-1', 'application/octet-stream',
    '', ';;;', 'x/y; a="b', 'text/html; charset=utf-7'])
TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
methods = (st.sampled_from(['PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'GET', 'POST', 'TRACE', 'CONNECT',
                            'get', 'post', 'Post'])
           | st.text(alphabet=TCHARS, min_size=1, max_size=12))
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
path_segments = (st.text(alphabet=PATH_CHARS, max_size=16)
                 | st.binary(max_size=6).map(lambda raw: quote_from_bytes(raw, safe=''))
                 | st.text(max_size=6).map(lambda text: quote(text, safe='')))
odd_paths = st.builds(
    lambda start, segments, query: start + '/'.join(segments) + ('' if query is None else '?' + query),
    st.sampled_from(['/', '//', '/./', '/../'] + [r + '/' for r in ROUTES]),
    st.lists(path_segments, max_size=4),
    st.none() | st.text(alphabet=PATH_CHARS + '%=&?/', max_size=30))


def contains_non_finite(value):
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(contains_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_non_finite(v) for v in value)
    return False


def with_signature(document, signature):
    document = dict(document)
    document['SIGNATURE'] = signature
    return document


def encoded(document, ensure_ascii=True):
    # allow_nan: a client may well send NaN/Infinity (Python's json does by default)
    return json.dumps(document, ensure_ascii=ensure_ascii).encode('utf-8')


@st.composite
def form_posts(draw):
    """``(content type, body)`` of form posts, from well formed to junk."""
    kind = draw(st.sampled_from(['urlencoded', 'multipart', 'multipart-junk', 'multipart-rfc2231-name']))
    names = st.sampled_from(['SIGNATURE', 'INPUT_VALUE', 'NR_WORKERS']) | st.text(max_size=10)
    values = st.sampled_from(['nope', SERVER, '3']) | st.text(max_size=20)
    fields = draw(st.lists(st.tuples(names, values), max_size=4))
    if kind == 'urlencoded':
        junk = draw(st.binary(max_size=40))
        form = '&'.join(quote(k) + '=' + quote(v) for k, v in fields).encode('ascii')
        return 'application/x-www-form-urlencoded', form + draw(st.sampled_from([b'', b'&'])) + junk
    boundary = draw(st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=20))
    if kind == 'multipart-junk':
        return draw(st.sampled_from(['multipart/form-data', 'multipart/form-data; boundary=' + boundary])), \
            draw(st.binary(max_size=200))
    disposition = ('form-data; name*=utf-8\'\'{}' if kind == 'multipart-rfc2231-name'
                   else 'form-data; name="{}"')
    parts = [('--{}\r\nContent-Disposition: {}\r\n\r\n{}\r\n'.format(
        boundary, disposition.format(quote(name) if kind == 'multipart-rfc2231-name' else name), value))
        for name, value in fields]
    body = (''.join(parts) + '--{}--\r\n'.format(boundary)).encode('utf-8')
    return 'multipart/form-data; boundary=' + boundary, body


# -- properties -----------------------------------------------------------------------------------
@HOSTILE
@given(route=routes, body=st.binary(max_size=2048), content_type=content_types)
def test_arbitrary_bytes_get_a_json_answer_and_the_gateway_keeps_serving(gateway, route, body, content_type):
    headers = [] if content_type is None else [('Content-Type', content_type)]
    send_hostile(gateway, 'POST', route, body, headers)


@HOSTILE
@given(route=routes, document=json_values, ensure_ascii=st.booleans())
def test_json_of_every_shape_gets_a_json_answer(gateway, route, document, ensure_ascii):
    send_hostile(gateway, 'POST', route, encoded(document, ensure_ascii),
                 [('Content-Type', 'application/json')])


@HOSTILE
@given(route=routes, document=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       signature=signature_values)
def test_json_object_with_a_signature_of_any_type_gets_a_json_answer(gateway, route, document, signature):
    document = with_signature(document, signature)
    answer = send_hostile(gateway, 'POST', route, encoded(document), [('Content-Type', 'application/json')])
    if route == '/run' and not isinstance(signature, str):
        # NaN/Infinity make the body not JSON at all, whatever the SIGNATURE
        expected = 'not valid JSON' if contains_non_finite(document) else 'SIGNATURE must be a string'
        assert answer.status == 400 and expected in json_of(answer)['ERROR'], answer


RESERVED_INPUTS = {'SIGNATURE', 'INPUT_VALUE', 'BASE64_KEYS', 'BASE64_OUTPUTS', 'ENCODING'}


def expected_demo2_answer(inputs):
    """``(status, predict_result)`` of the README's demo2 worker (WEIGHT 2, BIAS 1):
    ``int(INPUT_VALUE)`` in ``_predict``, so anything int() refuses is a 500 from the hook,
    except what its INPUT_SCHEMA refuses first with 400 (null, arrays, objects).
    NaN/Infinity are not JSON (RFC 8259): the gateway refuses them with 400."""
    if contains_non_finite(inputs):
        return 400, None
    value = inputs['INPUT_VALUE']
    if value is None or isinstance(value, (list, dict)):  # its INPUT_SCHEMA: a number or text
        return 400, None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 500, None
    return 200, {'dummy_model_predict': '{}*2 + 1 = {} PREDICTED'.format(value, number * 2 + 1)}


@HOSTILE
@given(value=json_values, extra=st.dictionaries(st.text(max_size=10).filter(lambda k: k not in RESERVED_INPUTS),
                                                json_values, max_size=3))
@example(value='12', extra={})
@example(value=[1], extra={})
def test_run_with_any_input_value_answers_what_the_worker_computes(gateway, value, extra):
    inputs = dict(extra, INPUT_VALUE=value)
    answer = send_hostile(gateway, 'POST', '/run', encoded(with_signature(inputs, SERVER)),
                          [('Content-Type', 'application/json')])
    status, result = expected_demo2_answer(inputs)
    assert answer.status == status, (inputs, answer)
    body = json_of(answer)
    if status == 200:
        assert body['predict_result'] == result
    elif status == 400 and not contains_non_finite(inputs):
        assert body['ERROR'].startswith('INPUT_SCHEMA: INPUT_VALUE: '), body
        assert body['INPUT_ERROR']['FIELD'] == 'INPUT_VALUE', body
    elif status == 500:
        assert body[HOOK_ERROR_KEY]['ERR_FUNC'] == '_predict', body


@settings(HOSTILE, max_examples=40)
@given(size=st.integers(0, 2 * MAX_BODY), char=st.sampled_from(['x', '7', 'é', '€', '😀', '"']),
       ensure_ascii=st.booleans(), chunked=st.booleans())
@example(size=MAX_BODY, char='x', ensure_ascii=True, chunked=False)
@example(size=MAX_BODY + 1, char='x', ensure_ascii=True, chunked=False)
@example(size=2 * MAX_BODY, char='😀', ensure_ascii=False, chunked=True)
def test_huge_strings_are_served_up_to_the_limit_and_refused_with_413_beyond(gateway, size, char, ensure_ascii,
                                                                             chunked):
    empty = encoded({'SIGNATURE': SERVER, 'INPUT_VALUE': ''}, ensure_ascii)
    unit = len(json.dumps(char, ensure_ascii=ensure_ascii).encode('utf-8')) - 2
    count = max(0, (size - len(empty)) // unit)
    body = encoded({'SIGNATURE': SERVER, 'INPUT_VALUE': char * count}, ensure_ascii)
    body += b' ' * max(0, size - len(body))  # JSON allows trailing blanks: exactly `size` bytes
    answer = send_hostile(gateway, 'POST', '/run', body, [('Content-Type', 'application/json')], chunked=chunked)
    if len(body) > MAX_BODY:
        assert answer.status == 413, (len(body), answer)
        assert 'over the limit of {} bytes'.format(MAX_BODY) in json_of(answer)['ERROR']
    elif char == '7' and 0 < count <= 4300:  # int() takes up to 4300 digits
        assert answer.status == 200, (len(body), answer)
    else:
        assert answer.status == 500 and json_of(answer)[HOOK_ERROR_KEY]['ERR_TYPE'] == 'ValueError', answer


@settings(HOSTILE, max_examples=60)
@given(depth=st.integers(1, 6000), opener=st.sampled_from(['[', '{"a":']), closed=st.booleans(),
       inside_input=st.booleans())
@example(depth=5000, opener='[', closed=True, inside_input=False)
@example(depth=5000, opener='[', closed=True, inside_input=True)
@example(depth=5000, opener='{"a":', closed=True, inside_input=True)
def test_deeply_nested_json_never_gets_a_500_from_the_gateway(gateway, depth, opener, closed, inside_input):
    closer = ']' if opener == '[' else '}'
    nested = opener * depth + ('1' if opener != '[' else '') + (closer * depth if closed else '')
    text = '{{"SIGNATURE": "{}", "INPUT_VALUE": {}}}'.format(SERVER, nested) if inside_input else nested
    answer = send_hostile(gateway, 'POST', '/run', text.encode('ascii'), [('Content-Type', 'application/json')])
    if depth >= 1000 or not closed:  # deeper than Python's json goes, or not JSON at all
        assert answer.status == 400, answer


@HOSTILE
@given(route=st.sampled_from(['/run', '/run', '/notifications', '/kill_server', '/update_workers', '/shutdown']),
       form=form_posts())
def test_odd_content_types_and_form_junk_get_a_json_answer(gateway, route, form):
    content_type, body = form
    send_hostile(gateway, 'POST', route, body, [('Content-Type', content_type)])


@HOSTILE
@given(route=routes, content_type=content_types, body=st.binary(max_size=200) | st.builds(
    lambda doc, sig: encoded(with_signature(doc, sig)),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3), signature_values))
def test_odd_content_types_with_any_body_get_a_json_answer(gateway, route, content_type, body):
    headers = [] if content_type is None else [('Content-Type', content_type)]
    send_hostile(gateway, 'POST', route, body, headers)


@HOSTILE
@given(method=methods, route=routes, body=st.none() | st.just(b'') | st.builds(
    lambda sig: encoded({'SIGNATURE': sig}), signature_values))
def test_odd_methods_on_every_route_get_a_json_answer(gateway, method, route, body):
    headers = [('Content-Type', 'application/json')] if body else []
    answer = send_hostile(gateway, method, route, body, headers)
    if method.upper() in ('PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE'):
        assert answer.status == 405, answer


@HOSTILE
@given(method=st.sampled_from(['GET', 'POST', 'HEAD']), target=odd_paths)
def test_odd_paths_get_a_json_answer(gateway, method, target):
    send_hostile(gateway, method, target, b'' if method == 'POST' else None)


def test_properties_left_the_model_server_alone(gateway):
    """Nothing above stopped, restarted or resized the model server (the admin guard worked)."""
    assert_server_untouched(gateway)
    assert gateway.server(SERVER)['NR_WORKERS'] == 2


# -- explicit edges ----------------------------------------------------------------------------------
def body_of_size(size, value='7'):
    body = encoded({'SIGNATURE': SERVER, 'INPUT_VALUE': value})
    return body + b' ' * (size - len(body))


@pytest.mark.parametrize('chunked', [False, True], ids=['content-length', 'chunked'])
def test_body_of_exactly_the_limit_is_served_and_one_byte_more_gets_413(gateway, chunked):
    at_limit = exchange(gateway.port, 'POST', '/run', body_of_size(MAX_BODY),
                        headers=[('Content-Type', 'application/json')], chunked=chunked)
    assert at_limit.status == 200, at_limit
    assert json_of(at_limit)['predict_result'] == {'dummy_model_predict': '7*2 + 1 = 15 PREDICTED'}

    over = exchange(gateway.port, 'POST', '/run', body_of_size(MAX_BODY + 1),
                    headers=[('Content-Type', 'application/json'), ('X-Request-Id', 'big-1')], chunked=chunked)
    assert over.status == 413, over
    body = json_of(over)
    assert 'request body over the limit of 1048576 bytes' in body['ERROR']
    # the fields every gateway answer carries, a refusal written before routing too
    assert {'ver-app', 'ver-lib', 'hostname', 'worker_id', 'time', 'gw-uptime'} <= set(body), body
    assert body['request_id'] == 'big-1' and over.headers.get('x-request-id') == 'big-1'
    assert over.headers.get('connection') == 'close'
    assert_still_serving(gateway)


def test_chunked_body_far_over_the_limit_is_refused_with_413(gateway):
    answer = exchange(gateway.port, 'POST', '/run', body_of_size(3 * MAX_BODY),
                      headers=[('Content-Type', 'application/json')], chunked=True)
    assert answer.status == 413 and 'over the limit' in json_of(answer)['ERROR'], answer
    assert_still_serving(gateway)


def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(gateway):
    with socket.create_connection(('127.0.0.1', gateway.port), timeout=10) as sock:
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                     b'Content-Length: 104857600\r\n\r\n')  # 100 MB announced, none sent
        response = http.client.HTTPResponse(sock, method='POST')
        response.begin()
        assert response.status == 413
        assert 'over the limit' in json.loads(response.read())['ERROR']
    assert_still_serving(gateway)


@pytest.mark.parametrize('route', ['/run', '/notifications', '/kill_server', '/shutdown', '/update_workers'])
@pytest.mark.parametrize('signature,type_name', [
    ([], 'list'), ([SERVER], 'list'), ({}, 'dict'), ({'SIGNATURE': SERVER}, 'dict'), (5, 'int'),
    (1.5, 'float'), (True, 'bool'), (None, 'NoneType')])
def test_signature_that_is_not_a_string_is_refused_with_400(gateway, route, signature, type_name):
    answer = post_json(gateway, route, {'SIGNATURE': signature, 'NR_WORKERS': 1})
    assert answer.status == 400, answer
    assert json_of(answer)['ERROR'] == 'SIGNATURE must be a string, not {}'.format(type_name)


@pytest.mark.parametrize('content_type', [None, 'application/json', 'text/plain'])
@pytest.mark.parametrize('body', [
    b'\xff\xfe', b'{"SIGNATURE": "\xff"}', b'{"SIGNATURE": "dummy_model_demo2", "INPUT_VALUE": "\xc3\x28"}',
    b'\xed\xa0\x80'])
def test_invalid_utf8_body_is_refused_with_400(gateway, content_type, body):
    headers = [] if content_type is None else [('Content-Type', content_type)]
    answer = exchange(gateway.port, 'POST', '/run', body, headers=headers)
    assert answer.status == 400, answer
    assert json_of(answer)['ERROR'] == 'request body is not UTF-8 text; send a JSON object'


def test_nesting_5000_deep_is_refused_with_400(gateway):
    answer = exchange(gateway.port, 'POST', '/run', b'[' * 5000 + b']' * 5000,
                      headers=[('Content-Type', 'application/json')])
    assert answer.status == 400 and 'not valid JSON' in json_of(answer)['ERROR'], answer


# -- hostile inputs found to break the contract ----------------------------------------------------------
@pytest.mark.parametrize('signature,number', [
    (SERVER, 'NaN'), ('nope', '-Infinity'), (SERVER, '1e999'), (SERVER, '[1, {"a": -1e400}]')])
def test_non_finite_numbers_are_refused_with_400_not_a_500(gateway, signature, number):
    # Python's json reads NaN and Infinity, and 1e999 as inf; none is JSON (RFC 8259), and
    # the gateway cannot forward them (it encodes with allow_nan=False)
    body = '{{"SIGNATURE": "{}", "INPUT_VALUE": {}}}'.format(signature, number).encode('ascii')
    answer = exchange(gateway.port, 'POST', '/run', body, headers=[('Content-Type', 'application/json')])
    assert answer.status == 400, answer
    assert 'ERROR' in json_of(answer)


@pytest.mark.parametrize('content_type,body', [
    ('multipart/form-data', b'junk'),
    ('multipart/form-data; boundary=xx', b'--xx--\r\n'),
])
def test_multipart_post_that_is_not_multipart_gets_a_json_400(gateway, content_type, body):
    answer = exchange(gateway.port, 'POST', '/run', body, headers=[('Content-Type', content_type)])
    assert answer.status == 400, answer
    assert 'ERROR' in json_of(answer)


def test_multipart_field_named_the_rfc2231_way_gets_an_answer(gateway):
    lines_before = len(gateway.proc.stdout_lines)
    body = (b"--xx\r\nContent-Disposition: form-data; name*=utf-8''SIGNATURE\r\n\r\n"
            b"dummy_model_demo2\r\n--xx--\r\n")
    try:
        answer = exchange(gateway.port, 'POST', '/run', body,
                          headers=[('Content-Type', 'multipart/form-data; boundary=xx')])
    except http.client.RemoteDisconnected:
        answer = None
    assert_still_serving(gateway)
    unhandled = [line for line in gateway.proc.stdout_lines[lines_before:] if 'Unhandled Error' in line]
    assert answer is not None, 'the gateway closed the connection without an answer; its log: {}'.format(unhandled)
    assert_sane_answer(answer)
    assert not unhandled


@pytest.mark.parametrize('target', ['/%ff', '/run%c3%28?x=1'])
def test_path_with_a_non_utf8_escape_gets_a_json_error(gateway, target):
    answer = exchange(gateway.port, 'GET', target, body=None)
    assert answer.status in (400, 404), answer
    assert 'ERROR' in json_of(answer)


def test_body_under_the_gateway_limit_reaches_the_worker_whatever_its_characters(processes, tmp_path):
    # the default limit (8 MiB) on both sides: 6 MB of 'é' is under it, but the gateway
    # forwards it re-encoded with \uXXXX escapes (3x: 18 MB), over the child's own 8 MiB limit
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {SERVER: {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config)
    wait_until(lambda: gateway.get('/ready'), lambda r: r.status == 200, what='/ready 200')
    body = encoded({'SIGNATURE': SERVER, 'INPUT_VALUE': 'é' * 3_000_000}, ensure_ascii=False)
    assert len(body) < 8 * 1024 * 1024
    answer = exchange(gateway.port, 'POST', '/run', body, headers=[('Content-Type', 'application/json')])
    # the worker's int('éé...') fails: the body reached it
    assert answer.status == 500, answer
    assert json_of(answer)[HOOK_ERROR_KEY]['ERR_TYPE'] == 'ValueError'
