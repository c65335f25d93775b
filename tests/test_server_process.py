"""The real model-server process (``python -m bis_twisted.model_server``): HTTP on loopback, startup
failures, and its exit when the parent that spawned it dies."""

import http.client
import os
import signal
import sys
import textwrap

import pytest

from procs import (READY_PATTERN, get, model_server_argv, post, process_gone, python_env, start_model_server,
                   wait_until)

DEADLINE = 20  # seconds; every wait ends as soon as its event comes
TOKEN = 'model-server-token-5f1c2e'
ADMIN = {'Authorization': 'Bearer ' + TOKEN}


@pytest.fixture(scope='module')
def demo2(module_processes):
    # a trailing newline, as a token read from a secret file has, is stripped
    return start_model_server(module_processes, 'dummy_model_demo2',
                              config={'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1},
                              env={'BIS_ADMIN_TOKEN': TOKEN + '\n'})


@pytest.fixture(scope='module')
def iris(module_processes):
    return start_model_server(module_processes, 'iris_classifier', config={'NR_WORKERS': 2})


# -- the demo endpoint ------------------------------------------------------------------------------
def test_run_answers_the_prediction_with_worker_call_and_signature(demo2):
    answer = demo2.post('/run', {'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 4})

    assert answer.status == 200
    body = answer.json()
    assert body['predict_result'] == {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
    assert isinstance(body['worker_id'], int)
    assert isinstance(body['call_id'], int)
    assert body['signature'].endswith('.dummy_model_demo2.DummyModelDemo2Worker.{}'.format(body['worker_id']))
    assert set(body) == {'predict_result', 'worker_id', 'call_id', 'batch_size', 'time', 'signature', 'request_id'}
    assert body['batch_size'] == 1  # batching is off by default


def test_run_by_get_with_query_arguments(demo2):
    answer = demo2.get('/run?INPUT_VALUE=5')

    assert answer.status == 200
    assert answer.json()['predict_result'] == {'dummy_model_predict': '5*2 + 1 = 11 PREDICTED'}


def test_run_without_the_input_answers_400_with_the_worker_error(demo2):
    answer = demo2.post('/run', {'SIGNATURE': 'dummy_model_demo2'})

    assert answer.status == 400
    details = answer.json()['DummyModelDemo2Worker_ERROR']
    assert (details['ERR_TYPE'], details['ERR_FUNC']) == ('ValueError', '_pre_process')
    assert details['ERR_MSG'] == 'INPUT_VALUE should be defined in inputs'


def test_notifications_hold_the_ready_message_and_each_call(demo2):
    call_id = demo2.post('/run', {'INPUT_VALUE': 3}).json()['call_id']

    notifications = demo2.post('/notifications', {'SIGNATURE': 'dummy_model_demo2'}).json()

    assert 'server ready with 2 workers' in [item['NOTIF'] for item in notifications['GENERAL']]
    [item] = notifications[str(call_id)]
    assert (item['NOTIFICATION_TYPE'], item['MODULE']) == ('LOG', 'DummyModelDemo2Worker')
    assert item['NOTIF'].startswith('Predicting on usr_input: 3 using ')


def test_update_workers_grows_and_shrinks_the_pool(demo2):
    grown = demo2.post('/update_workers', {'SIGNATURE': 'dummy_model_demo2', 'NR_WORKERS': 3}, headers=ADMIN)
    assert (grown.status, grown.json()) == (200, {'MESSAGE': 'OK', 'NR_WORKERS': 3})
    assert demo2.get('/health').json()['NR_WORKERS'] == 3

    shrunk = demo2.post('/update_workers', {'NR_WORKERS': 2}, headers=ADMIN)
    assert shrunk.json() == {'MESSAGE': 'OK', 'NR_WORKERS': 2}
    assert demo2.post('/run', {'INPUT_VALUE': 1}).status == 200


def test_update_workers_without_the_token_is_refused_and_changes_nothing(demo2):
    before = demo2.get('/health').json()['NR_WORKERS']
    for headers, status in (({}, 401), ({'Authorization': 'Bearer not-the-token-at-all'}, 403)):
        answer = demo2.post('/update_workers', {'NR_WORKERS': 7}, headers=headers)
        assert answer.status == status, answer
        assert 'Authorization: Bearer' in answer.json()['ERROR']
    assert demo2.get('/health').json()['NR_WORKERS'] == before
    # /run and /health stay open
    assert demo2.post('/run', {'INPUT_VALUE': 1}).status == 200


def test_a_server_started_without_a_token_refuses_control_calls(processes):
    server = start_model_server(processes, 'dummy_model_demo2', config={'NR_WORKERS': 1},
                                env={'BIS_ADMIN_TOKEN': ''})
    answer = server.post('/update_workers', {'NR_WORKERS': 7})
    assert answer.status == 403
    assert 'started without BIS_ADMIN_TOKEN' in answer.json()['ERROR']
    assert server.get('/health').json()['NR_WORKERS'] == 1


def test_a_token_shorter_than_16_characters_stops_the_start_with_one_line(processes):
    proc = processes.start(model_server_argv('dummy_model_demo2'), env=python_env({'BIS_ADMIN_TOKEN': 'short'}))
    assert proc.wait_exit(DEADLINE) == 2
    [line] = proc.stderr_lines
    assert 'BIS_ADMIN_TOKEN is 5 characters long; use at least 16' in line


def test_the_config_entry_may_come_from_the_environment(processes):
    proc = processes.start(model_server_argv('dummy_model_demo2')[:-2],  # no --config-json
                           env=python_env({'BIS_SERVER_CONFIG': '{"NR_WORKERS": 1, "WEIGHT": 3, "BIAS": 0}'}))
    port = int(proc.wait_for_line(READY_PATTERN, timeout=DEADLINE).group(1))
    answer = post('http://127.0.0.1:{}/run'.format(port), {'INPUT_VALUE': 2})
    assert answer.json()['predict_result'] == {'dummy_model_predict': '2*3 + 0 = 6 PREDICTED'}


def test_get_paths_lists_the_routes(demo2):
    answer = demo2.get('/get_paths')

    assert answer.json() == {'PATHS': ['/run', '/notifications', '/update_workers', '/get_paths', '/health']}


def test_health_reports_the_server_and_its_pid(demo2):
    answer = demo2.get('/health')

    assert answer.status == 200
    body = answer.json()
    assert (body['STATUS'], body['SERVER'], body['PID']) == ('OK', 'dummy_model_demo2', demo2.proc.pid)


# -- the iris example: a real model -----------------------------------------------------------------
def test_iris_classifies_a_typical_setosa_and_a_typical_virginica(iris):
    answer = iris.post('/run', {'SIGNATURE': 'iris_classifier',
                                'FEATURES': [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})

    assert answer.status == 200
    result = answer.json()['predict_result']
    setosa, virginica = result['predictions']
    assert (setosa['label'], setosa['class_id']) == ('setosa', 0)
    assert (virginica['label'], virginica['class_id']) == ('virginica', 2)
    for prediction in (setosa, virginica):
        assert set(prediction['probabilities']) == {'setosa', 'versicolor', 'virginica'}
        assert sum(prediction['probabilities'].values()) == pytest.approx(1.0, abs=1e-3)
        assert max(prediction['probabilities'], key=prediction['probabilities'].get) == prediction['label']
    assert result['model'] == 'LogisticRegression'
    assert 0.9 < result['train_accuracy'] <= 1.0


def test_iris_accepts_a_single_flower(iris):
    answer = iris.post('/run', {'FEATURES': [5.9, 3.0, 4.2, 1.5]})

    assert [p['label'] for p in answer.json()['predict_result']['predictions']] == ['versicolor']


def test_iris_rejects_a_short_row_with_400_saying_what_to_send(iris):
    answer = iris.post('/run', {'FEATURES': [5.1, 3.5, 1.4]})

    assert answer.status == 400
    error = answer.json()['ERROR']
    # refused by the endpoint's INPUT_SCHEMA before _pre_process: the field, what to send, the rule
    assert error.startswith('INPUT_SCHEMA: FEATURES: expected an array of 4 numbers')
    assert 'sepal length, sepal width, petal length, petal width' in error
    assert '(rule anyOf)' in error


# -- SERVER_CLASS: a second server from the same file ------------------------------------------------
def test_a_server_class_serves_under_its_own_name(processes):
    server = start_model_server(processes, 'dummy_model_demo2-bis', server_class='dummy_model_demo2',
                                config={'WEIGHT': 3, 'BIAS': 0})

    body = server.post('/run', {'SIGNATURE': 'dummy_model_demo2-bis', 'INPUT_VALUE': 4}).json()

    assert body['predict_result'] == {'dummy_model_predict': '4*3 + 0 = 12 PREDICTED'}
    assert body['signature'].endswith('.dummy_model_demo2-bis.DummyModelDemo2Worker.0')


# -- startup failures ----------------------------------------------------------------------------------
def test_an_unusable_endpoint_file_exits_non_zero_with_one_line_naming_it(processes, endpoint_folder):
    path = endpoint_folder.write('broken_model', 'def broken(:\n')
    proc = processes.start(model_server_argv('broken_model', endpoints=endpoint_folder.path))

    code = proc.wait_exit(DEADLINE)

    assert code != 0
    [line] = proc.stderr_lines
    assert line.startswith('bis-server broken_model: {}:1: syntax error: '.format(path))
    assert not any('BIS-SERVER-READY' in line for line in proc.stdout_lines)


def test_a_missing_endpoint_file_exits_non_zero_naming_it(processes, endpoint_folder):
    proc = processes.start(model_server_argv('no_such_model', endpoints=endpoint_folder.path))

    assert proc.wait_exit(DEADLINE) != 0
    [line] = proc.stderr_lines
    assert str(endpoint_folder.path / 'no_such_model.py') in line
    assert 'does not exist' in line


def test_a_failing_load_model_exits_non_zero_with_one_clear_line(processes, endpoint_folder):
    # a multi-line message (as torch's load errors are) still makes one line
    path = endpoint_folder.write('no_weights', '''
        from bis_twisted import FlaskWorker

        class NoWeightsWorker(FlaskWorker):
            def _load_model(self):
                raise FileNotFoundError('weights.bin is missing;\\nrun download.sh')
    ''')
    proc = processes.start(model_server_argv('no_weights', endpoints=endpoint_folder.path))

    assert proc.wait_exit(DEADLINE) != 0
    [line] = proc.stderr_lines
    assert line.startswith('bis-server no_weights: {}: _load_model failed: FileNotFoundError: '
                           'weights.bin is missing; run download.sh'.format(path))
    assert not any('BIS-SERVER-READY' in line for line in proc.stdout_lines)


def health(port):
    return get('http://127.0.0.1:{}/health'.format(port)).json()


# -- the parent dies ---------------------------------------------------------------------------------
STUCK_ENDPOINT = '''
    import threading

    from bis_twisted import FlaskWorker

    NEVER = threading.Event()

    class StuckModelWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

        def _predict(self, prep_inputs):
            NEVER.wait()  # a model call that never returns

        def _post_process(self, pred):
            return pred
'''

# Holds the server's stdin pipe, as the gateway does, and waits for it; its own death (even by
# SIGKILL) closes that pipe.
PARENT_SCRIPT = textwrap.dedent('''
    import subprocess, sys
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE)
    print('CHILD-PID', child.pid, flush=True)
    child.wait()
''')


def test_the_server_exits_when_its_parent_is_killed_even_with_a_hook_stuck(processes, endpoint_folder):
    endpoint_folder.write('stuck_model', STUCK_ENDPOINT)
    argv = model_server_argv('stuck_model', endpoints=endpoint_folder.path, extra_args=['--exit-with-parent'])
    parent = processes.start([sys.executable, '-c', PARENT_SCRIPT] + argv, name='parent of stuck_model')
    server_pid = int(parent.wait_for_line(r'CHILD-PID (\d+)', timeout=DEADLINE).group(1))
    port = int(parent.wait_for_line(READY_PATTERN, timeout=DEADLINE).group(1))

    stuck = http.client.HTTPConnection('127.0.0.1', port, timeout=DEADLINE)
    try:
        stuck.request('POST', '/run', body=b'{"SIGNATURE": "stuck_model"}',
                      headers={'Content-Type': 'application/json'})
        wait_until(lambda: health(port), lambda body: body['BUSY'] == 1, timeout=DEADLINE,
                   what='the worker to be stuck in _predict')

        os.kill(parent.pid, signal.SIGKILL)
        assert parent.wait_exit(DEADLINE) == -signal.SIGKILL

        wait_until(lambda: process_gone(server_pid), timeout=DEADLINE,
                   what='the server (pid {}) to exit after its parent died'.format(server_pid))
    finally:
        stuck.close()

