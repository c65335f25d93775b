"""The client's own rules, on ``httpx.MockTransport`` (no network): which status is which
exception, that only 503 is retried, and that a retry waits the answer's ``Retry-After``
(capped by ``max_retry_wait``)."""

import json
import time

import httpx
import pytest

from bis_twisted.client import (BadGateway, BisClientError, Client, NotFound, Overloaded, PayloadTooLarge,
                                UnknownSignature)


def scripted(*answers):
    """A transport answering ``answers`` (status, headers, body) in turn; it records the requests."""
    queue = list(answers)
    seen = []

    def handler(request):
        seen.append(request)
        status, headers, body = queue.pop(0)
        return httpx.Response(status, headers=headers, json=body)

    transport = httpx.MockTransport(handler)
    transport.seen = seen
    return transport


def test_status_codes_map_to_their_exceptions_with_the_error_text():
    cases = [(404, '/run', UnknownSignature), (404, '/metrics', NotFound), (413, '/run', PayloadTooLarge),
             (502, '/run', BadGateway), (418, '/run', BisClientError)]
    for status, path, cls in cases:
        transport = scripted((status, {}, {'ERROR': 'why {}'.format(status)}))
        with Client('http://gw', transport=transport) as bis:
            with pytest.raises(cls) as raised:
                if path == '/run':
                    bis.run('x')
                else:
                    bis.metrics()
        assert type(raised.value) is cls
        assert raised.value.status == status and raised.value.error == 'why {}'.format(status)


def test_a_retry_waits_retry_after_and_sends_the_same_request_again():
    transport = scripted((503, {'Retry-After': '0.3'}, {'ERROR': 'busy'}), (200, {}, {'predict_result': 1}))
    with Client('http://gw', transport=transport, retries=1, token='t0k') as bis:
        started = time.monotonic()
        assert bis.run('m', {'A': 1}, B=2)['predict_result'] == 1
        waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0
    first, second = transport.seen
    assert json.loads(first.content) == json.loads(second.content) == {'A': 1, 'B': 2, 'SIGNATURE': 'm'}
    assert second.headers['authorization'] == 'Bearer t0k'


def test_the_wait_is_capped_and_other_errors_are_never_retried():
    transport = scripted((503, {'Retry-After': '3600'}, {'ERROR': 'later'}), (503, {}, {'ERROR': 'still'}))
    with Client('http://gw', transport=transport, retries=1, max_retry_wait=0.1) as bis:
        started = time.monotonic()
        with pytest.raises(Overloaded) as raised:
            bis.run('m')
        assert time.monotonic() - started < 2.0
    assert raised.value.error == 'still' and raised.value.retry_after is None
    transport = scripted((502, {}, {'ERROR': 'closed'}), (200, {}, {}))
    with Client('http://gw', transport=transport, retries=5) as bis:
        with pytest.raises(BadGateway):
            bis.run('m')  # the model server may have run it: not sent twice
    assert len(transport.seen) == 1


def test_async_client_retries_the_same_way_and_reads_ready_503_as_an_answer():
    import asyncio

    from bis_twisted.client import AsyncClient

    transport = scripted((503, {'Retry-After': '0.2'}, {'ERROR': 'loading'}), (200, {}, {'predict_result': 'ok'}),
                         (503, {'Retry-After': '1'}, {'READY': False, 'NOT_READY': ['m'], 'ERROR': 'not answering: m'}))

    async def scenario():
        async with AsyncClient('http://gw', transport=transport, retries=2) as bis:
            started = time.monotonic()
            answer = await bis.run('m', X=1)
            return answer, time.monotonic() - started, await bis.ready()

    answer, waited, ready = asyncio.run(scenario())
    assert answer['predict_result'] == 'ok' and 0.2 <= waited < 2.0
    assert ready == {'READY': False, 'NOT_READY': ['m'], 'ERROR': 'not answering: m'}
    assert len(transport.seen) == 3  # /ready's 503 was not retried


def test_the_client_module_passes_mypy_strict():
    import os
    import subprocess
    import sys

    from procs import REPO_ROOT

    done = subprocess.run([sys.executable, '-m', 'mypy', '--strict', '--follow-imports=silent', '--cache-dir', os.devnull,
                           os.path.join('bis_twisted', 'client', '__init__.py')], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
