"""End-to-end, with the default health settings (no HEALTH_INTERVAL in the config): a hung
model server (SIGSTOP: what a reactor blocked in C code holding the GIL, or a deadlock, looks
like from outside) is replaced by a new process within 10 s, which then serves; one whose two
workers are both busy in long ``_predict`` calls is left alone, because its reactor still
answers."""

import concurrent.futures
import signal
import textwrap
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, get, wait_until

# What a user writes: a model that takes half a minute per call (it sleeps, as a model waiting
# on a device or a remote service does), on two workers.
SLOW = textwrap.dedent('''
    import time

    from bis_twisted import FlaskWorker


    class SlowThinkerWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            print('thinking for', inputs['SECONDS'], 's', flush=True)
            time.sleep(inputs['SECONDS'])
            return 'done'

        def _post_process(self, pred):
            return pred
''')

DETECTION_GOAL = 10.0  # seconds from SIGSTOP to a new process started in its place


@pytest.fixture
def gateway(processes, tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'slow_thinker.py').write_text(SLOW)
    with open(ENDPOINTS_DIR + '/dummy_model_demo2.py') as fh:
        (endpoints / 'dummy_model_demo2.py').write_text(fh.read())
    config = {'DEFAULT_SERVER': 'dummy_model_demo2', 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1}, 'slow_thinker': {'NR_WORKERS': 2, 'TIMEOUT': 120}}}
    gw = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)
    gw.wait_online('slow_thinker')
    return gw


def test_a_sigstopped_child_is_replaced_within_10_s_under_the_default_config_and_serves(gateway):
    """Detection and replacement are the gateway's: the new process is started within 10 s.
    It then serves once it has loaded, which takes what the endpoint's load takes."""
    before = gateway.server('dummy_model_demo2')
    stopped = psutil.Process(before['PID'])
    try:
        stopped.send_signal(signal.SIGSTOP)
        hung_at = time.monotonic()
        # deadlines, not delays: each poll ends as soon as the event comes
        replaced = wait_until(lambda: gateway.server('dummy_model_demo2'),
                              lambda s: s['PID'] not in (None, before['PID']), timeout=DETECTION_GOAL,
                              what='a new process in place of the stopped one', interval=0.1)
        started_in = time.monotonic() - hung_at

        def served():
            answer = gateway.run('dummy_model_demo2', INPUT_VALUE=4)
            return answer.status == 200 and answer

        answer = wait_until(served, timeout=60, what='/run answered by the new process', interval=0.1)
        serving_in = time.monotonic() - hung_at
    finally:
        if stopped.is_running() and stopped.status() != psutil.STATUS_ZOMBIE:
            stopped.kill()

    after = gateway.server('dummy_model_demo2')
    assert after['PID'] == replaced['PID'] and answer.json()['predict_result']
    assert after['RESTARTS'] == before['RESTARTS'] + 1
    assert 'did not answer 3 health checks in a row (1s apart)' in after['ERROR'], after
    print('new process {:.1f}s after SIGSTOP, serving {:.1f}s after'.format(started_in, serving_in))


def test_a_child_whose_two_workers_are_busy_for_30_s_is_not_restarted(gateway):
    before = gateway.server('slow_thinker')
    port = before['PORT']
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        calls = [pool.submit(gateway.post, '/run', {'SIGNATURE': 'slow_thinker', 'SECONDS': 30}, timeout=60)
                 for _ in range(2)]
        wait_until(lambda: get('http://127.0.0.1:{}/health'.format(port)).json()['BUSY'], lambda n: n == 2,
                   what='both workers busy')
        # more than 3 beats of the health loop (1 s apart) and its miss limit, several times over
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            now = gateway.server('slow_thinker')
            assert (now['PID'], now['RESTARTS']) == (before['PID'], before['RESTARTS']), now
            time.sleep(0.2)  # poll interval of a bounded negative check, not a wait for an event
        assert not any(call.done() for call in calls), [c.result().text for c in calls if c.done()]
    finally:
        pool.shutdown(wait=False)  # the two calls end with the gateway the fixture stops
