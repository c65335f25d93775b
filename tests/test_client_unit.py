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


def recorded_sleeps(monkeypatch, module, name='sleep'):
    """The waits the client asks for, in order, none of them slept."""
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if name == 'sleep' and module is not time:
            return _no_wait()

    monkeypatch.setattr(module, name, sleep)
    return waits


async def _no_wait():
    return None


def test_a_retry_waits_retry_after_and_sends_the_same_request_again(monkeypatch):
    waits = recorded_sleeps(monkeypatch, time)
    transport = scripted((503, {'Retry-After': '0.3'}, {'ERROR': 'busy'}), (200, {}, {'predict_result': 1}))
    with Client('http://gw', transport=transport, retries=1, token='t0k') as bis:
        assert bis.run('m', {'A': 1}, B=2)['predict_result'] == 1
    assert waits == [0.3]
    first, second = transport.seen
    assert json.loads(first.content) == json.loads(second.content) == {'A': 1, 'B': 2, 'SIGNATURE': 'm'}
    assert second.headers['authorization'] == 'Bearer t0k'


def test_the_wait_is_capped_and_other_errors_are_never_retried(monkeypatch):
    waits = recorded_sleeps(monkeypatch, time)
    transport = scripted((503, {'Retry-After': '3600'}, {'ERROR': 'later'}), (503, {}, {'ERROR': 'still'}))
    with Client('http://gw', transport=transport, retries=1, max_retry_wait=0.1) as bis:
        with pytest.raises(Overloaded) as raised:
            bis.run('m')
    assert waits == [0.1]
    assert raised.value.error == 'still' and raised.value.retry_after is None
    transport = scripted((502, {}, {'ERROR': 'closed'}), (200, {}, {}))
    with Client('http://gw', transport=transport, retries=5) as bis:
        with pytest.raises(BadGateway):
            bis.run('m')  # the model server may have run it: not sent twice
    assert len(transport.seen) == 1


def test_async_client_retries_the_same_way_and_reads_ready_503_as_an_answer(monkeypatch):
    import asyncio

    from bis_twisted.client import AsyncClient

    waits = recorded_sleeps(monkeypatch, asyncio)

    transport = scripted((503, {'Retry-After': '0.2'}, {'ERROR': 'loading'}), (200, {}, {'predict_result': 'ok'}),
                         (503, {'Retry-After': '1'}, {'READY': False, 'NOT_READY': ['m'], 'ERROR': 'not answering: m'}))

    async def scenario():
        async with AsyncClient('http://gw', transport=transport, retries=2) as bis:
            return await bis.run('m', X=1), await bis.ready()

    answer, ready = asyncio.run(scenario())
    assert answer['predict_result'] == 'ok' and waits == [0.2]
    assert ready == {'READY': False, 'NOT_READY': ['m'], 'ERROR': 'not answering: m'}
    assert len(transport.seen) == 3  # /ready's 503 was not retried


def test_rollout_sends_the_body_of_a_start_a_promote_and_an_abort_and_409_is_a_conflict():
    import asyncio

    from bis_twisted.client import AsyncClient, Conflict

    started = {'ROLLOUT': {'STATE': 'canary'}}
    transport = scripted((200, {}, started), (200, {}, {'ROLLOUT': {'STATE': 'promoted'}}),
                         (409, {}, {'ERROR': 'no rollout of m is under way'}), (200, {}, started))
    with Client('http://gw', transport=transport) as bis:
        assert bis.rollout('m', 'm_v2', 20, config={'REPLICAS': 2}, rollback_on={'ERROR_RATE': 0.1},
                           timeout=300) == started
        assert bis.rollout('m', promote=True)['ROLLOUT']['STATE'] == 'promoted'
        with pytest.raises(Conflict) as raised:
            bis.rollout('m', abort=True)
    assert raised.value.status == 409
    bodies = [json.loads(r.content) for r in transport.seen]
    assert bodies == [{'SIGNATURE': 'm', 'SERVER_CLASS': 'm_v2', 'PERCENT': 20, 'CONFIG': {'REPLICAS': 2},
                       'ROLLBACK_ON': {'ERROR_RATE': 0.1}},
                      {'SIGNATURE': 'm', 'PROMOTE': True}, {'SIGNATURE': 'm', 'ABORT': True}]
    assert transport.seen[0].extensions['timeout']['read'] == 300
    assert all(r.url.path == '/rollout' for r in transport.seen)

    async def shadow():
        async with AsyncClient('http://gw', transport=transport) as bis:
            return await bis.rollout('m', shadow=True, tolerance=0.01)

    assert asyncio.run(shadow()) == started
    assert json.loads(transport.seen[-1].content) == {'SIGNATURE': 'm', 'TOLERANCE': 0.01, 'SHADOW': True}
