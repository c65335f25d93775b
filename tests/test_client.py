"""``bis_twisted.client`` against the real gateway (``bis-gateway`` with real children on
loopback): answers, each error as its typed exception with the status and the ``ERROR``
text, retries on 503 that honour ``Retry-After``, the admin calls with and without the
token, and ``AsyncClient`` doing the same."""

import asyncio
import shutil
import textwrap
import threading
import time

import pytest

from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, Processes, free_port, wait_until

from bis_twisted.client import (AsyncClient, BadInput, Client, EndpointError, Forbidden, GatewayTimeout,
                                GatewayUnreachable, Overloaded, Unauthorized, UnknownSignature)

pytestmark = pytest.mark.timeout(120)

TOKEN = 'tok-client-e2e-admin-secret'

SLOW = '''
    import time

    from bis_twisted import FlaskWorker


    class SlowWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return float(inputs.get('SECONDS', 0))

        def _predict(self, seconds):
            print('sleeping', seconds, flush=True)
            time.sleep(seconds)
            return seconds

        def _post_process(self, slept):
            return {'slept': slept}
'''

BROKEN = '''
    from bis_twisted import FlaskWorker


    class ModelOutOfCheese(Exception):
        pass


    class BrokenWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs.get('X')

        def _predict(self, x):
            raise ModelOutOfCheese('out of cheese at x={!r}'.format(x))

        def _post_process(self, pred):
            return pred
'''

CONFIG = {
    'NO_STARTUP_WAIT': True,
    'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1},
        'dummy_model_demo1': {'NR_WORKERS': 1, 'DISABLED': True},
        'slow': {'NR_WORKERS': 1, 'TIMEOUT': 1},
        'broken': {'NR_WORKERS': 1},
    },
}


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('client')
    endpoints = tmp / 'endpoints'
    shutil.copytree(ENDPOINTS_DIR, str(endpoints), ignore=shutil.ignore_patterns('__pycache__'))
    (endpoints / 'slow.py').write_text(textwrap.dedent(SLOW), encoding='utf-8')
    (endpoints / 'broken.py').write_text(textwrap.dedent(BROKEN), encoding='utf-8')
    with Processes() as group:
        gateway = start_gateway(group, tmp, config=CONFIG, endpoints=endpoints, use_twistd=False,
                                env={'BIS_ADMIN_TOKEN': TOKEN})
        for name in ('dummy_model_demo2', 'slow', 'broken'):
            gateway.wait_online(name, timeout=30)
        yield gateway


@pytest.fixture
def client(gateway):
    with Client(gateway.url(''), timeout=10) as bis:
        yield bis


def test_run_answers_the_predict_result_and_the_gateway_fields(client):
    answer = client.run('dummy_model_demo2', INPUT_VALUE=3)
    assert answer['predict_result'] == {'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    assert answer['call_id'] >= 1
    assert answer['signature'].endswith('.dummy_model_demo2.DummyModelDemo2Worker.0')
    for field in ('ver-lib', 'hostname', 'time', 'gw-uptime', 'request_id'):
        assert field in answer
    # the same with the inputs as a dict, and a request id of ours
    answer = client.run('dummy_model_demo2', {'INPUT_VALUE': 5}, request_id='client-test-1')
    assert answer['predict_result'] == {'dummy_model_predict': '5*2 + 1 = 11 PREDICTED'}
    assert answer['request_id'] == 'client-test-1'


def test_read_calls_answer_what_the_gateway_does(client):
    servers = client.list_servers()['AVAIL_SERVERS']
    assert servers['dummy_model_demo2']['ONLINE'] is True
    assert client.system_status()['SYSTEM_STATUS']['mem_total'] > 0
    assert client.health()['STATUS'] == 'OK'
    notes = client.notifications('dummy_model_demo2')
    assert 'GENERAL' in notes
    assert client.openapi()['openapi'].startswith('3.')
    assert 'bis_requests_total' in client.metrics()
    assert 'POINTS' in client.stats()
    ready = client.ready()  # dummy_model_demo1 is DISABLED: not counted against readiness
    assert ready['READY'] is True and ready['NOT_READY'] == []


def test_each_error_is_its_own_exception_with_status_and_error_text(client):
    with pytest.raises(UnknownSignature) as unknown:
        client.run('no_such_model', X=1)
    assert unknown.value.status == 404
    assert "unknown SIGNATURE 'no_such_model'" in unknown.value.error
    assert 'dummy_model_demo2' in unknown.value.error  # the available ones are listed

    with pytest.raises(BadInput) as bad:
        client.run('dummy_model_demo2', LANGUAGE='en')  # no INPUT_VALUE: _pre_process raises
    assert bad.value.status == 400
    assert 'INPUT_VALUE' in bad.value.error
    assert bad.value.body['DummyModelDemo2Worker_ERROR']['ERR_TYPE'] == 'ValueError'

    with pytest.raises(EndpointError) as broken:
        client.run('broken', X=41)
    assert broken.value.status == 500
    assert 'out of cheese at x=41' in broken.value.error
    assert broken.value.body['BrokenWorker_ERROR']['ERR_TYPE'] == 'ModelOutOfCheese'

    with pytest.raises(GatewayTimeout) as late:
        client.run('slow', SECONDS=3)
    assert late.value.status == 504

    with pytest.raises(Overloaded) as stopped:  # DISABLED: 503 saying to start it, nothing to wait for
        client.run('dummy_model_demo1', INPUT_VALUE='x')
    assert stopped.value.status == 503
    assert stopped.value.retry_after is None
    assert '/start_server' in stopped.value.error


def test_no_gateway_at_all_is_gateway_unreachable():
    with Client('http://127.0.0.1:{}'.format(free_port()), timeout=2) as bis:
        with pytest.raises(GatewayUnreachable) as gone:
            bis.health()
    assert gone.value.status is None
    assert 'ConnectError' in gone.value.error


def test_admin_calls_need_the_token(gateway, client):
    with pytest.raises(Unauthorized) as no_token:
        client.start_server('dummy_model_demo1')
    assert no_token.value.status == 401
    with Client(gateway.url(''), token='wrong', timeout=10) as wrong:
        with pytest.raises(Forbidden):
            wrong.kill_server('slow')
    assert client.list_servers()['AVAIL_SERVERS']['slow']['ONLINE'] is True

    with Client(gateway.url(''), token=TOKEN, timeout=60) as admin:
        assert admin.update_workers('dummy_model_demo2', 2)['NR_WORKERS'] == 2
        assert admin.list_servers()['AVAIL_SERVERS']['dummy_model_demo2']['NR_WORKERS'] == 2
        assert admin.update_workers('dummy_model_demo2', 1)['NR_WORKERS'] == 1
        with pytest.raises(BadInput):
            admin.update_workers('dummy_model_demo2', 0)


def refused_503(metrics_text):
    """The gateway's count of /run 503s for dummy_model_demo1, from its /metrics."""
    for line in metrics_text.splitlines():
        if line.startswith('bis_requests_total{') and 'endpoint="dummy_model_demo1"' in line and 'code="503"' in line \
                and 'protocol="run"' in line:
            return float(line.rsplit(' ', 1)[1])
    return 0.0


def test_a_503_without_retry_after_is_not_retried(gateway):
    # DISABLED: it stays down until /start_server, so waiting is no use and is not done
    with Client(gateway.url(''), timeout=10, retries=2) as bis:
        before = bis.metrics()
        with pytest.raises(Overloaded) as stopped:
            bis.run('dummy_model_demo1', INPUT_VALUE='x')
        after = bis.metrics()
    assert stopped.value.retry_after is None and '/start_server' in stopped.value.error
    assert refused_503(after) - refused_503(before) == 1  # sent once, not retried


def test_retries_carry_a_request_over_a_server_start(gateway):
    """A server started again while the client keeps retrying its 503s ("starting", with
    Retry-After): the call answers once the server is back, with no error seen by the caller."""
    admin = Client(gateway.url(''), token=TOKEN, timeout=30)
    try:
        admin.kill_server('dummy_model_demo2')
        wait_until(lambda: admin.list_servers()['STOPPED_SERVERS'].get('dummy_model_demo2'),
                   lambda s: s and not s['ONLINE'], what='dummy_model_demo2 stopped')
        admin.start_server('dummy_model_demo2')
        with Client(gateway.url(''), timeout=10, retries=30, max_retry_wait=0.5) as bis:
            answer = bis.run('dummy_model_demo2', INPUT_VALUE=4)
        assert answer['predict_result'] == {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
    finally:
        admin.start_server('dummy_model_demo2')
        gateway.wait_online('dummy_model_demo2', timeout=30)
        admin.close()


def test_async_client_makes_the_same_calls(gateway):
    async def scenario():
        async with AsyncClient(gateway.url(''), timeout=10) as bis:
            answers = await asyncio.gather(*[bis.run('dummy_model_demo2', INPUT_VALUE=n) for n in range(4)])
            servers = await bis.list_servers()
            with pytest.raises(UnknownSignature):
                await bis.run('nope')
            with pytest.raises(Unauthorized):
                await bis.kill_server('slow')
            with pytest.raises(Overloaded):
                await bis.run('dummy_model_demo1', INPUT_VALUE='x')
            health = await bis.health()
        return answers, servers, health

    answers, servers, health = asyncio.run(scenario())
    assert [a['predict_result']['dummy_model_predict'] for a in answers] == [
        '{}*2 + 1 = {} PREDICTED'.format(n, 2 * n + 1) for n in range(4)]
    assert servers['AVAIL_SERVERS']['dummy_model_demo2']['ONLINE'] is True
    assert health['STATUS'] == 'OK'
