"""OpenTelemetry end to end: the real gateway (``twistd -n -y bis.tac``) and its children,
configured by the standard OTEL_* variables, export to a local OTLP/HTTP receiver; the spans
are decoded with ``opentelemetry-proto``. Without the extra (a stand-in package that fails to
import) or the variables, the gateway serves as before."""

import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading

import pytest

from gateway_process import start_gateway
from otlp_receiver import OTLPReceiver
from procs import ENDPOINTS_DIR, REPO_ROOT, get, http, python_env, wait_until

pytestmark = pytest.mark.e2e

BATCHY_ENDPOINT = '''
    import os
    import time

    from bis_twisted import FlaskWorker


    class BatchyWorker(FlaskWorker):
        """Batched; a request with {"WAIT_FOR": <path>} holds its batch until that file exists,
        {"FAIL": true} fails in _pre_process."""

        def _pre_process(self, inputs):
            if inputs.get('FAIL'):
                raise ValueError('asked to fail')
            return inputs

        def _predict(self, batch):
            self.log.P('predicting a batch of {}'.format(len(batch)))
            for inputs in batch:
                while inputs.get('WAIT_FOR') and not os.path.exists(inputs['WAIT_FOR']):
                    time.sleep(0.01)  # a model at work, held by the test
            return [inputs.get('X', 0) * 2 for inputs in batch]

        def _post_process(self, pred):
            return {'doubled': pred}
'''


def traceparent():
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, '00-{}-{}-01'.format(trace_id, span_id)


@pytest.fixture(scope='module')
def receiver():
    with OTLPReceiver() as running:
        yield running


@pytest.fixture(scope='module')
def traced_gateway(module_processes, tmp_path_factory, receiver):
    tmp_path = tmp_path_factory.mktemp('traced')
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    for name in ('dummy_model_demo2', 'text_streamer'):
        (endpoints / (name + '.py')).write_text(open(os.path.join(ENDPOINTS_DIR, name + '.py')).read())
    (endpoints / 'batchy.py').write_text(textwrap.dedent(BATCHY_ENDPOINT))
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1},
        'batchy': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'MAX_BATCH_SIZE': 4, 'BATCH_TIMEOUT': 0.01},
        'text_streamer': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WORD_DELAY': 0.01}}}
    env = {'OTEL_EXPORTER_OTLP_ENDPOINT': receiver.endpoint, 'OTEL_BSP_SCHEDULE_DELAY': '50',
           'OTEL_TRACES_SAMPLER': 'parentbased_always_on', 'BIS_LOG_FORMAT': 'json'}
    gateway = start_gateway(module_processes, tmp_path, config=config, endpoints=endpoints, env=env)
    gateway.logs_dir = tmp_path / '_cache' / '_logs'
    for name in config['CONFIG_ENDPOINTS']:
        gateway.wait_online(name)
    return gateway


def spans_of(receiver, trace_id, until, what):
    return wait_until(lambda: receiver.of_trace(trace_id), until, timeout=20, what=what)


def header_of(answer, name):
    return {k.lower(): v for k, v in answer.headers.items()}.get(name)


def one(spans, **match):
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_one_run_is_one_trace_from_the_client_through_the_gateway_into_the_hooks(traced_gateway, receiver):
    trace_id, client_span, header = traceparent()
    answer = http('POST', traced_gateway.url('/run'), body={'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 3},
                  headers={'traceparent': header, 'X-Request-Id': 'traced-1'})
    assert answer.status == 200 and answer.json()['request_id'] == 'traced-1'
    assert header_of(answer, 'traceparent').split('-')[1] == trace_id

    wanted = {'POST /run', 'hop dummy_model_demo2', 'queue wait', '_pre_process', '_predict', '_post_process'}
    spans = spans_of(receiver, trace_id, lambda s: wanted <= {x.name for x in s} and len(
        [x for x in s if x.name == 'POST /run']) == 2, 'the spans of both processes')
    server = one(spans, name='POST /run', service='bis-gateway')
    assert server.parent_id == client_span
    assert header_of(answer, 'traceparent').split('-')[2] == server.span_id
    assert server.attributes['bis.endpoint'] == 'dummy_model_demo2'
    assert server.attributes['http.response.status_code'] == 200
    assert server.attributes['bis.retries'] == 0 and server.attributes['bis.replica'].startswith('http://')
    hop = one(spans, name='hop dummy_model_demo2')
    assert hop.parent_id == server.span_id and hop.service == 'bis-gateway'
    model = one(spans, name='POST /run', service='bis-model-server')
    assert model.parent_id == hop.span_id
    assert model.attributes['bis.request_id'] == 'traced-1'
    for stage in ('queue wait', '_pre_process', '_predict', '_post_process'):
        assert one(spans, name=stage).parent_id == model.span_id, stage
    order = [one(spans, name=stage).start for stage in ('_pre_process', '_predict', '_post_process')]
    assert order == sorted(order)


def test_a_hook_exception_is_recorded_on_its_span(traced_gateway, receiver):
    trace_id, _, header = traceparent()
    answer = http('POST', traced_gateway.url('/run'), body={'SIGNATURE': 'batchy', 'FAIL': True},
                  headers={'traceparent': header})
    assert answer.status == 400
    spans = spans_of(receiver, trace_id, lambda s: any(x.name == '_pre_process' for x in s), 'the failed hook span')
    failed = one(spans, name='_pre_process')
    assert failed.status == 2 and 'exception' in failed.events


def test_a_batch_of_four_exports_one_predict_span_linked_to_the_four_requests(traced_gateway, receiver, tmp_path):
    release = tmp_path / 'release'
    server_url = 'http://127.0.0.1:{}'.format(traced_gateway.server('batchy')['PORT'])  # the model server, for its queue
    blocker = threading.Thread(target=http, args=('POST', traced_gateway.url('/run')), kwargs={
        'body': {'SIGNATURE': 'batchy', 'WAIT_FOR': str(release)}, 'timeout': 30})
    blocker.start()
    wait_until(lambda: get(server_url + '/health').json(), lambda h: h['BUSY'] == 1, what='the blocker running')
    traces, answers = [traceparent() for _ in range(4)], {}

    def send(index):
        answers[index] = http('POST', traced_gateway.url('/run'), body={'SIGNATURE': 'batchy', 'X': index},
                              headers={'traceparent': traces[index][2]}, timeout=30)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for sender in senders:
        sender.start()
    wait_until(lambda: get(server_url + '/health').json(), lambda h: h['QUEUED'] == 4, what='four requests queued')
    release.write_text('go')
    for thread in senders + [blocker]:
        thread.join(30)
    assert [answers[i].json()['batch_size'] for i in range(4)] == [4] * 4

    request_spans = []
    for trace_id, _, _ in traces:
        spans = spans_of(receiver, trace_id, lambda s: any(x.service == 'bis-model-server' and x.name == 'POST /run'
                                                           for x in s), 'the request span')
        request_spans.append(one(spans, name='POST /run', service='bis-model-server'))
    everything = wait_until(lambda: [s for s in receiver.spans if s.name == '_predict' and len(s.links) == 4],
                            what='one _predict span linked to the four requests')
    [predict] = [s for s in everything if {link[1] for link in s.links} == {r.span_id for r in request_spans}]
    assert predict.attributes['bis.batch_size'] == 4
    assert {link[0] for link in predict.links} == {t[0] for t in traces}
    # a log line written inside the hook names the hook's span (JSON logs are on here)
    records = [json.loads(line) for line in (traced_gateway.logs_dir / 'batchy.log').read_text().splitlines()]
    [logged] = [r for r in records if r['message'].endswith('predicting a batch of 4')]
    assert (logged['trace_id'], logged['span_id']) == (predict.trace_id, predict.span_id)


def test_a_stream_exports_its_span_when_it_ends(traced_gateway, receiver):
    trace_id, _, header = traceparent()
    answer = http('POST', traced_gateway.url('/run'), body={'SIGNATURE': 'text_streamer', 'PROMPT': 'a', 'NR_WORDS': 5},
                  headers={'traceparent': header}, timeout=30)
    assert answer.status == 200
    lines = [json.loads(line) for line in answer.body.decode().splitlines()]
    assert lines[-1]['chunks'] == 5
    spans = spans_of(receiver, trace_id, lambda s: any(x.name == 'stream' for x in s), 'the stream span')
    stream = one(spans, name='stream')
    model = one(spans, name='POST /run', service='bis-model-server')
    assert stream.parent_id == model.span_id and stream.attributes['bis.chunks'] == 5
    chunk_spans = [s for s in spans if s.name == '_predict' and s.parent_id == model.span_id]
    assert len(chunk_spans) >= 5 and stream.end >= max(s.end for s in chunk_spans)


def test_without_the_extra_the_gateway_serves_as_before(processes, tmp_path):
    shadow = tmp_path / 'no_otel'
    (shadow / 'opentelemetry').mkdir(parents=True)
    (shadow / 'opentelemetry' / '__init__.py').write_text("raise ImportError('opentelemetry is not installed')\n")
    env = {'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9', 'PYTHONPATH': '{}{}{}'.format(
        shadow, os.pathsep, REPO_ROOT)}
    gateway = start_gateway(processes, tmp_path, config={'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1}}}, env=env)
    gateway.wait_online('dummy_model_demo2')
    answer = http('POST', gateway.url('/run'), body={'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 3},
                  headers={'traceparent': traceparent()[2]})
    assert answer.status == 200 and header_of(answer, 'traceparent') is None
    assert any('OpenTelemetry is not installed' in line for line in gateway.proc.stdout_lines)


def test_without_the_variables_nothing_of_opentelemetry_is_imported():
    code = ('import sys\n'
            'from bis_twisted.gateway import service, routes, proxy\n'
            'from bis_twisted.model_server import app\n'
            'from bis_twisted.shared import tracing\n'
            'assert not tracing.setup("x")\n'
            'assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"\n')
    env = {k: v for k, v in python_env().items() if not k.startswith('OTEL_')}
    subprocess.run([sys.executable, '-c', code], env=env, check=True, timeout=60)
