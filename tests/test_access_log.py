"""The access log: one line per request (client, method, path, SIGNATURE, status, bytes, ms,
request id), as fields of a ``twisted.logger`` event so a JSON observer writes them as
fields; ``ACCESS_LOG: false`` turns it off."""

import io
import json
import re

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher, jsonFileLogObserver
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from bis_twisted.gateway.accesslog import AccessLog, Stamped, remember_signature
from gateway_process import start_gateway
from procs import http, wait_until

DEMO2 = {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}
ACCESS_LINE = re.compile(r'access (\S+) (GET|POST) (\S+) (\S+) (\d{3}) (\d+)B (\S+)ms rid=(\S+)$')


def finished_request(clock, path=b'/run', signature='iris_classifier', code=200, body=b'{"a": 1}'):
    request = Request(DummyChannel(), False)
    request.path = path
    request.method = b'POST'

    class Answer:
        isLeaf = True

        def render(self, request):
            clock.advance(0.0042)
            return body

    Stamped(Answer(), clock).render(request)
    remember_signature(request, signature)
    request.setResponseCode(code)
    request.sentLength = len(body)
    request._bis_request_id = 'rid-1'
    return request


def test_a_line_is_an_event_with_the_requests_fields_which_a_json_observer_writes():
    clock = Clock()
    out = io.StringIO()
    publisher = LogPublisher(jsonFileLogObserver(out))
    access = AccessLog(clock)
    access._log = Logger(namespace='bis_twisted.access', observer=publisher)
    access(finished_request(clock))
    [event] = [json.loads(line.strip('\x1e')) for line in out.getvalue().splitlines() if line.strip('\x1e')]
    assert {k: event[k] for k in ('client', 'method', 'path', 'signature', 'status', 'bytes', 'request_id')} == {
        'client': '192.168.1.1', 'method': 'POST', 'path': '/run', 'signature': 'iris_classifier', 'status': 200,
        'bytes': 8, 'request_id': 'rid-1'}
    assert event['elapsed_ms'] == pytest.approx(4.2)
    assert event['access'] == {k: event[k] for k in ('client', 'method', 'path', 'signature', 'status', 'bytes',
                                                     'elapsed_ms')}
    assert event['endpoint'] == 'iris_classifier'
    assert event['access_line'] == 'access 192.168.1.1 POST /run iris_classifier 200 8B 4.2ms rid=rid-1'
    assert event['log_namespace'] == 'bis_twisted.access' and 'log_time' in event

    access.enabled = False
    access(finished_request(clock))
    assert len([line for line in out.getvalue().splitlines() if line.strip('\x1e')]) == 1


@pytest.mark.e2e
def test_100_requests_give_100_access_lines_with_their_request_ids(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config={'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo2',
                                                         'CONFIG_ENDPOINTS': {'dummy_model_demo2': DEMO2}},
                            use_twistd=False, ports=8)
    ids = ['test-rid-{:03d}'.format(i) for i in range(100)]
    for i, rid in enumerate(ids):
        if i % 4 == 3:
            answer = http('GET', gateway.url('/health'), headers={'X-Request-Id': rid})
        elif i % 4 == 2:
            answer = http('POST', gateway.url('/run'), body={'SIGNATURE': 'nope'}, headers={'X-Request-Id': rid})
        else:
            answer = http('POST', gateway.url('/run'), body={'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': i},
                          headers={'X-Request-Id': rid})
        assert answer.headers.get('X-Request-Id') == rid

    def access_lines():
        return [ACCESS_LINE.search(line) for line in gateway.proc.stdout_lines if ' access ' in line]

    lines = wait_until(access_lines, lambda found: len([m for m in found if m and m.group(8).startswith('test-rid')])
                       >= 100, timeout=20, what='100 access-log lines')
    mine = {m.group(8): m for m in lines if m and m.group(8).startswith('test-rid')}
    assert sorted(mine) == ids and len([m for m in lines if m and m.group(8).startswith('test-rid')]) == 100
    run = mine['test-rid-000']
    assert run.group(1) == '127.0.0.1' and run.groups()[1:5] == ('POST', '/run', 'dummy_model_demo2', '200')
    assert int(run.group(6)) > 0 and float(run.group(7)) >= 0
    assert mine['test-rid-002'].groups()[1:5] == ('POST', '/run', 'nope', '404')
    assert mine['test-rid-003'].groups()[1:5] == ('GET', '/health', '-', '200')


@pytest.mark.e2e
def test_access_log_false_writes_none(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config={'ACCESS_LOG': False, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': DEMO2}}, use_twistd=False, ports=8)
    for _ in range(5):
        assert gateway.get('/health').status == 200
    assert not [line for line in gateway.proc.stdout_lines if ' access ' in line]


def test_in_the_json_log_format_a_line_carries_the_facts_and_the_request_id():
    from bis_twisted.shared import logformat

    clock = Clock()
    out = io.StringIO()
    access = AccessLog(clock)
    access._log = Logger(namespace='bis_twisted.access', observer=LogPublisher(
        logformat.file_observer(out, logformat.JSON)))
    access(finished_request(clock))
    record = json.loads(out.getvalue())
    assert record['message'] == 'access 192.168.1.1 POST /run iris_classifier 200 8B 4.2ms rid=rid-1'
    assert (record['logger'], record['request_id'], record['endpoint']) == ('bis_twisted.access', 'rid-1',
                                                                           'iris_classifier')
    assert record['access'] == {'client': '192.168.1.1', 'method': 'POST', 'path': '/run',
                                'signature': 'iris_classifier', 'status': 200, 'bytes': 8,
                                'elapsed_ms': pytest.approx(4.2)}
