"""The compiled schema checks and the C-speed JSON encoding answer exactly as the slower
code they stand in for: same values accepted, same errors, same bytes refused."""

import datetime
import json
import os
import threading
import uuid

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol
from twisted.internet.testing import StringTransport

from procs import ENDPOINTS_DIR

from bis_twisted.model_server.loader import load_endpoint
from bis_twisted.shared.schemas import EndpointSchemas, SchemaCheck, SchemaViolation
from bis_twisted.shared import twisted_private, web
from bis_twisted.shared.web import dumps, encode_answer


def _refusal(check, inputs):
    with pytest.raises(SchemaViolation) as refused:
        check.check_input(inputs)
    return refused.value


def test_compiled_iris_check_accepts_and_refuses_as_before():
    check = SchemaCheck(load_endpoint(ENDPOINTS_DIR, 'iris_classifier').schemas)
    assert check._input.fast is not None  # the compiled path is the one taken
    check.check_input({'FEATURES': [5.1, 3.5, 1.4, 0.2]})
    check.check_input({'FEATURES': [[5.1, 3.5, 1.4, 0.2]] * 40})
    for bad in ({'FEATURES': [1, 2]}, {'FEATURES': [1, 2, 3, True]}, {'FEATURES': 'x'}, {}):
        assert _refusal(check, bad).field == 'FEATURES'


@pytest.mark.parametrize('schema, value', [
    ({'type': 'array', 'prefixItems': [{'type': 'string'}]}, [1]),  # 2020-12: fastjsonschema ignores it
    ({'type': 'number', 'multipleOf': 0.1}, 0.3),  # the two round floats differently
    ({'$defs': {'n': {'type': 'number'}}, 'properties': {'A': {'$ref': '#/$defs/n', 'minimum': 5}}}, {'A': 1}),
])
def test_schemas_the_compiled_path_could_misread_are_checked_by_jsonschema_alone(schema, value):
    check = SchemaCheck(EndpointSchemas(input=dict(schema, type='object') if 'properties' in schema else {
        'type': 'object', 'properties': {'X': schema}}))
    assert check._input.fast is None
    inputs = value if 'properties' in schema else {'X': value}
    with pytest.raises(SchemaViolation):
        check.check_input(inputs)


def test_formats_are_not_checked_and_inputs_are_not_filled_with_defaults():
    check = SchemaCheck(EndpointSchemas(input={'type': 'object', 'properties': {
        'MAIL': {'type': 'string', 'format': 'email'}, 'N': {'type': 'integer', 'default': 3}}}))
    inputs = {'MAIL': 'not a mail address'}
    check.check_input(inputs)
    assert inputs == {'MAIL': 'not a mail address'}


@pytest_twisted.ensureDeferred
async def test_a_large_input_is_checked_off_the_reactor_thread_and_refused_the_same():
    seen = []
    check = SchemaCheck(EndpointSchemas(input={'type': 'object', 'properties': {'X': {'type': 'integer'}}}),
                        inline_bytes=10)
    original = check.check_input

    def spy(inputs):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(inputs)

    check.check_input = spy
    await check.input_checked({'X': 1}, 5)
    await check.input_checked({'X': 1}, 500)
    with pytest.raises(SchemaViolation) as refused:
        await check.input_checked({'X': 'one'}, 500)
    assert seen == [True, False, False]
    assert refused.value.field == 'X' and refused.value.rule == 'type: integer'


def test_encoding_matches_the_standard_library_and_refuses_what_it_refused():
    body = {'a': np.array([[1.5, 2.0]]), 'b': b'\x00\xff', 'c': (1, 2), 'd': np.int64(7), 'e': None,
            'f': 'é', 'g': {1: 'int key'}, 'h': 2 ** 70, 'i': np.float64(0.25)}
    assert json.loads(dumps(body)) == {'a': [[1.5, 2.0]], 'b': 'AP8=', 'c': [1, 2], 'd': 7, 'e': None, 'f': 'é',
                                       'g': {'1': 'int key'}, 'h': 2 ** 70, 'i': 0.25}
    for refused in ({'x': float('nan')}, {'x': np.array([np.inf])}, {'x': datetime.date(2026, 1, 1)},
                    {'x': object()}):
        status, data = encode_answer(200, refused)
        assert status == 500 and json.loads(data)['ERROR'].startswith('the answer could not be encoded as JSON')
    assert json.loads(encode_answer(200, {'x': '\ud800'})[1]) == {'x': '\ud800'}  # escaped, as json did


@pytest.mark.parametrize('raw', [b'{"a": 1, "b": [1.5, -0.0, "x"]}', b'{"big": 99999999999999999999999}',
                                 b'{"s": "\\ud800"}', b'{"a": NaN}', b'{"a": 1e400}', b'{"a": -Infinity}',
                                 b'{"a":\x01}', b'[1]', b'{"a": 1,}', b'{"deep": ' + b'[' * 5000 + b']' * 5000 + b'}',
                                 b'{"a":' * 1010 + b'1' + b'}' * 1010])
def test_request_bodies_decode_and_are_refused_as_with_the_standard_library(raw):
    from bis_twisted.errors import BadRequest
    from bis_twisted.shared import web

    def outcome(parse):
        try:
            return ('ok', parse(raw))
        except BadRequest as exc:
            return ('refused', exc.message)

    def standard_library_only(data):
        original = web._fast_loads
        web._fast_loads = lambda _raw: web._SLOW
        try:
            return web.parse_json_object(data)
        finally:
            web._fast_loads = original

    fast, slow = outcome(web.parse_json_object), outcome(standard_library_only)
    assert fast == slow
    if fast[0] == 'ok':
        assert [type(v) for v in fast[1].values()] == [type(v) for v in slow[1].values()]


def test_request_ids_are_version_4_uuids_all_distinct_past_a_refill_of_their_random_bytes():
    ids = [web._random_id() for _ in range(1000)]  # about four 4 KiB reads of os.urandom
    assert len(set(ids)) == 1000
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert (parsed.hex, parsed.version, parsed.variant) == (rid, 4, uuid.RFC_4122)


def test_a_forked_process_draws_request_ids_of_its_own():
    web._random_id()  # random bytes left over in the parent's pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, ' '.join(web._random_id() for _ in range(4)).encode('ascii'))
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, 'rb') as pipe:
        in_child = pipe.read().decode('ascii').split()
    in_parent = [web._random_id() for _ in range(4)]
    assert len(in_child) == 4 and not set(in_child) & set(in_parent)


class _Writer(protocol.Protocol):
    """Writes a large answer then a small one, each through ``send_now``, and closes."""

    held = []

    def connectionMade(self):
        twisted_private.send_now(self.transport, b'a' * (8 * 1024 * 1024))  # more than the socket takes at once
        _Writer.held.append(bool(self.transport._tempDataBuffer))  # the rest waits in the transport
        twisted_private.send_now(self.transport, b'the end')
        self.transport.loseConnection()


class _Reader(protocol.Protocol):
    def __init__(self):
        self.chunks = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.done.callback(b''.join(self.chunks))


def _listen_tcp(reactor, factory):
    port = reactor.listenTCP(0, factory, interface='127.0.0.1')
    return port, endpoints.TCP4ClientEndpoint(reactor, '127.0.0.1', port.getHost().port)


def _listen_unix(reactor, factory):
    path = '\0bis-test-send-now-{}'.format(os.getpid())
    return reactor.listenUNIX(path, factory), endpoints.UNIXClientEndpoint(reactor, path)


@pytest.mark.parametrize('listen', [_listen_tcp, _listen_unix], ids=['tcp', 'unix'])
@pytest_twisted.ensureDeferred
async def test_send_now_keeps_the_order_of_what_the_transport_still_holds(listen):
    from twisted.internet import reactor
    del _Writer.held[:]
    port, endpoint = listen(reactor, protocol.Factory.forProtocol(_Writer))
    try:
        reader = _Reader()
        await endpoints.connectProtocol(endpoint, reader)
        received = await reader.done
    finally:
        await port.stopListening()
    assert _Writer.held == [True]
    assert len(received) == 8 * 1024 * 1024 + 7
    assert received.endswith(b'the end') and received.count(b'a') == 8 * 1024 * 1024


def test_send_now_on_any_other_transport_is_its_write():
    transport = StringTransport()
    twisted_private.send_now(transport, b'one ')
    twisted_private.send_now(transport, b'two')
    assert transport.value() == b'one two'


@pytest_twisted.ensureDeferred
async def test_a_small_value_is_checked_at_once_and_a_large_one_off_the_reactor_with_the_same_refusal():
    import types

    from bis_twisted.errors import BadRequest
    from bis_twisted.model_server.app import ModelServer

    check = SchemaCheck(EndpointSchemas(input={'type': 'object', 'properties': {'X': {'type': 'integer'}}},
                                        output={'type': 'object', 'properties': {'n': {'type': 'integer'}}}),
                        inline_bytes=10)
    assert check.input_check({'X': 1}, 5) is None  # checked: no Deferred to wait for
    with pytest.raises(SchemaViolation):
        check.input_check({'X': 'one'}, 5)
    with pytest.raises(SchemaViolation) as refused:
        await check.input_check({'X': 'one'}, 500)
    assert refused.value.field == 'X'
    assert check.output_check({'n': 1}) is None
    with pytest.raises(SchemaViolation):
        check.output_check({'n': 'x'})
    with pytest.raises(SchemaViolation) as refused:
        await check.output_check({'n': 'x' * 50})
    assert refused.value.field == 'n'

    server = types.SimpleNamespace(schema_check=check)  # what checked_input reads of its server
    for size in (5, 500):  # at once, and off the reactor: the same 400
        with pytest.raises(BadRequest) as refused:
            pending = ModelServer.checked_input(server, {'X': 'one'}, size)
            await pending
        assert refused.value.message.startswith('INPUT_SCHEMA: ') and refused.value.extra['INPUT_ERROR']
    assert ModelServer.checked_input(server, {'X': 2}, 5) is None
    assert await ModelServer.checked_input(server, {'X': 2}, 500) is None


def test_an_answer_read_back_for_its_schema_is_the_value_json_reads():
    for value in ({'a': [1.5, -0.0, 'x', None, True]}, {'big': 2 ** 70, 'n': 10 ** 18}, {'s': '\ud800 é'},
                  {'deep': [[[[1]]]] * 200}, {'nested': {'f': 0.1 + 0.2, 'e': 1e300}}):
        data = dumps(value)
        assert web.loads_encoded(data) == json.loads(data)
        assert repr(web.loads_encoded(data)) == repr(json.loads(data))  # ints stay ints, floats the same floats


def test_the_time_of_an_answer_is_the_local_time_to_the_second(monkeypatch):
    import time as time_module

    clock = [1796640000.25]
    monkeypatch.setattr(web.time, 'time', lambda: clock[0])
    first = web.now_text()
    assert first == time_module.strftime('%Y-%m-%d %H:%M:%S', time_module.localtime(1796640000))
    clock[0] = 1796640000.99
    assert web.now_text() == first  # the same second
    clock[0] = 1796640001.0
    assert web.now_text() == time_module.strftime('%Y-%m-%d %H:%M:%S', time_module.localtime(1796640001))
