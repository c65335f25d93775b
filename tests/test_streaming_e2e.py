"""End-to-end: streaming endpoints (a ``_predict`` that yields) through the real gateway
(``twistd -n -y bis.tac``), real model-server children, real HTTP on loopback, read
incrementally by real clients (httpx, and httpx-sse for the SSE framing)."""

import json
import os
import socket
import textwrap
import time

import httpx
import psutil
import pytest
from httpx_sse import connect_sse

from gateway_process import free_port_block, start_gateway
from procs import Processes, wait_until

# Each endpoint is what a user writes: it prints, blocks on files the test creates (never on
# the clock), and cleans up in a finally.
GATED = '''
import os, time
from bis_twisted import FlaskWorker

def wait_for(path):
    # the test creates this file once it has read what came before
    while not os.path.exists(path):
        time.sleep(0.005)

class GatedWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        print('streaming for', inputs.get('FOLDER'), flush=True)
        folder = inputs['FOLDER']
        try:
            for index in range(int(inputs.get('NR_CHUNKS', 3))):
                if index:
                    wait_for(os.path.join(folder, 'go{}'.format(index)))
                    open(os.path.join(folder, 'made{}'.format(index)), 'w').close()
                yield {'index': index, 'pid': os.getpid()}
        finally:
            # GeneratorExit (client gone) or the end: either way the user's cleanup runs
            with open(os.path.join(folder, 'finally'), 'w') as fh:
                fh.write('closed')

    def _post_process(self, pred):
        return dict(pred, word='w{}'.format(pred['index']))
'''

FAILING = '''
from bis_twisted import FlaskWorker

class TokenizerGone(Exception):
    pass

class FailingWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return int(inputs.get('FAIL_AT', 2))

    def _predict(self, fail_at):
        for index in range(5):
            if index == fail_at:
                raise TokenizerGone('the tokenizer went away at word {}'.format(index))
            yield index

    def _post_process(self, pred):
        return pred * 10
'''

BIG = '''
import os
from bis_twisted import FlaskWorker

class BigWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return int(inputs['NR_CHUNKS']), int(inputs['CHUNK_BYTES']), inputs.get('PROGRESS')

    def _predict(self, prep):
        count, size, progress = prep
        piece = 'x' * size
        for index in range(count):
            if progress and index % 16 == 0:
                with open(progress, 'w') as fh:
                    fh.write(str(index))
            yield piece

    def _post_process(self, pred):
        return pred
'''

STALLING = '''
import time
from bis_twisted import FlaskWorker

class StallingWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        yield 'first'
        time.sleep(float(inputs.get('STALL', 3)))  # a model stuck between two tokens
        yield 'late'

    def _post_process(self, pred):
        return pred
'''

CRASHY = '''
import os, time
from bis_twisted import FlaskWorker

class CrashyWorker(FlaskWorker):
    """Dies (the whole process) the first time it is asked to, before or after its first chunk."""

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        folder = inputs['FOLDER']
        open(os.path.join(folder, 'started-{}'.format(os.getpid())), 'w').close()
        first_time = not os.path.exists(os.path.join(folder, 'crashed'))
        if first_time and inputs['CRASH'] == 'before':
            open(os.path.join(folder, 'crashed'), 'w').close()
            os._exit(1)
        yield os.getpid()
        if first_time and inputs['CRASH'] == 'after':
            while not os.path.exists(os.path.join(folder, 'go1')):
                time.sleep(0.005)
            open(os.path.join(folder, 'crashed'), 'w').close()
            os._exit(1)
        yield os.getpid()

    def _post_process(self, pred):
        return pred
'''

PLAIN = '''
from bis_twisted import FlaskWorker

class PlainWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs.get('X', 1)

    def _predict(self, x):
        return x * 2

    def _post_process(self, pred):
        return {'doubled': pred}
'''


@pytest.fixture(scope='module')
def gateway(tmp_path_factory, http_front):
    root = tmp_path_factory.mktemp('streaming')
    endpoints = root / 'endpoints'
    endpoints.mkdir()
    for name, source in (('gated', GATED), ('failing', FAILING), ('big', BIG), ('stalling', STALLING),
                         ('plain', PLAIN), ('crashy', CRASHY)):
        (endpoints / (name + '.py')).write_text(textwrap.dedent(source), encoding='utf-8')
    port = free_port_block(16)
    gated_port = port + 1
    config = {'CONFIG_ENDPOINTS': {
        'gated': {'NR_WORKERS': 1, 'PORT': gated_port},
        'failing': {'NR_WORKERS': 1},
        'big': {'NR_WORKERS': 1},
        'stalling': {'NR_WORKERS': 1, 'TIMEOUT': 1},
        'plain': {'NR_WORKERS': 1},
        'gated_replicas': {'SERVER_CLASS': 'gated', 'NR_WORKERS': 1, 'REPLICAS': 2},
        'crashy': {'NR_WORKERS': 1, 'REPLICAS': 2},
        # the first server's own port, as a remote model server
        'gated_remote': {'URLS': ['http://127.0.0.1:{}/run'.format(gated_port)]},
    }}
    with Processes() as group:
        gw = start_gateway(group, root, config=config, endpoints=endpoints, ports=16,
                           env={'BIS_PORT': str(port), 'BIS_HTTP_FRONT': http_front})
        for name in ('gated', 'failing', 'big', 'stalling', 'plain', 'gated_replicas', 'gated_remote', 'crashy'):
            gw.wait_online(name, timeout=30)
        yield gw


def stream_lines(gateway, body, headers=None, timeout=10):
    """The answer's lines, as the client reads them."""
    with httpx.Client(timeout=timeout) as client:
        with client.stream('POST', gateway.url('/run'), json=body, headers=headers or {}) as answer:
            return answer.status_code, answer.headers, [json.loads(line) for line in answer.iter_lines() if line]


def test_first_chunk_reaches_the_client_while_the_generator_waits_before_its_second_yield(gateway, tmp_path):
    body = {'SIGNATURE': 'gated', 'FOLDER': str(tmp_path), 'NR_CHUNKS': 3}
    with httpx.Client(timeout=10) as client:
        with client.stream('POST', gateway.url('/run'), json=body) as answer:
            assert answer.status_code == 200
            assert answer.headers['content-type'] == 'application/x-ndjson'
            lines = answer.iter_lines()
            first = json.loads(next(lines))
            # the worker is blocked on go1, which only exists from now on
            assert not (tmp_path / 'go1').exists()
            assert first == {'predict_result': {'index': 0, 'pid': first['predict_result']['pid'], 'word': 'w0'}}
            (tmp_path / 'go1').write_text('')
            assert json.loads(next(lines))['predict_result']['index'] == 1
            (tmp_path / 'go2').write_text('')
            assert json.loads(next(lines))['predict_result']['index'] == 2
            summary = json.loads(next(lines))
            assert list(lines) == []
    assert summary['chunks'] == 3
    assert summary['worker_id'] == 0 and isinstance(summary['call_id'], int)
    assert summary['signature'].endswith('.gated.GatedWorker.0')
    for key in ('ver-app', 'ver-lib', 'hostname', 'gw-uptime', 'request_id', 'time'):
        assert key in summary, key
    assert (tmp_path / 'finally').read_text() == 'closed'


def test_sse_framing_read_by_a_real_sse_parser(gateway, tmp_path):
    for index in (1, 2):
        (tmp_path / 'go{}'.format(index)).write_text('')
    body = {'SIGNATURE': 'gated', 'FOLDER': str(tmp_path), 'NR_CHUNKS': 3}
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, 'POST', gateway.url('/run'), json=body) as source:
            assert source.response.headers['content-type'] == 'text/event-stream'
            events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
    assert [name for name, _ in events] == ['message', 'message', 'message', 'end']
    assert [data['predict_result']['word'] for _, data in events[:3]] == ['w0', 'w1', 'w2']
    end = events[-1][1]
    assert end['chunks'] == 3 and 'call_id' in end and 'worker_id' in end and 'gw-uptime' in end


def test_a_non_streaming_endpoint_asked_for_sse_answers_one_json_object(gateway):
    answer = gateway.post('/run', {'SIGNATURE': 'plain', 'X': 21}, headers={'Accept': 'text/event-stream'})
    assert answer.status == 200
    assert answer.headers['Content-Type'] == 'application/json'
    assert answer.json()['predict_result'] == {'doubled': 42}


def test_client_gone_mid_stream_stops_the_generator_and_frees_the_worker(gateway, tmp_path):
    body = {'SIGNATURE': 'gated', 'FOLDER': str(tmp_path), 'NR_CHUNKS': 1000}
    with httpx.Client(timeout=10) as client:
        with client.stream('POST', gateway.url('/run'), json=body) as answer:
            first = json.loads(next(answer.iter_lines()))
            assert first['predict_result']['index'] == 0
    # the client is gone; the generator wakes up, reaches its next yield and is closed there.
    # The child hears of it a moment later: until then the generator may make a chunk or two
    # more, so the gates open one at a time, each once the chunk before it was made.
    assert not (tmp_path / 'finally').exists()
    closed = tmp_path / 'finally'
    for index in range(1, 100):
        (tmp_path / 'go{}'.format(index)).write_text('')
        made = tmp_path / 'made{}'.format(index)
        wait_until(lambda: closed.exists() or made.exists(), timeout=10,
                   what='chunk {} made or the generator closed'.format(index))
        if closed.exists():
            break
    wait_until(closed.exists, timeout=10, what="the endpoint's finally after the client left")
    made = len(list(tmp_path.glob('made*')))
    print('the generator made {} chunk(s) after the client left'.format(made))
    assert made < 99  # closed at a yield, not run to its end
    # its only worker serves the next request, to the end
    other = tmp_path / 'next'
    other.mkdir()
    status, _headers, lines = stream_lines(gateway, {'SIGNATURE': 'gated', 'FOLDER': str(other), 'NR_CHUNKS': 1})
    assert status == 200
    assert lines[-1]['chunks'] == 1 and lines[-1]['worker_id'] == 0


def test_an_exception_mid_stream_ends_it_with_an_error_line_and_the_worker_serves_on(gateway):
    status, _headers, lines = stream_lines(gateway, {'SIGNATURE': 'failing', 'FAIL_AT': 2})
    assert status == 200  # the status line went out with the first chunk
    assert [line['predict_result'] for line in lines[:2]] == [0, 10]
    last = lines[-1]
    assert len(lines) == 3
    assert 'TokenizerGone' in last['ERROR'] and 'the tokenizer went away at word 2' in last['ERROR']
    assert last['chunks'] == 2 and 'gw-uptime' in last and last['status'] == 500
    assert last['FailingWorker_ERROR']['ERR_FUNC'] == '_predict'
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, 'POST', gateway.url('/run'), json={'SIGNATURE': 'failing', 'FAIL_AT': 1}) as source:
            events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
    assert [name for name, _ in events] == ['message', 'error']
    assert 'TokenizerGone' in events[-1][1]['ERROR']
    # failing before the first chunk is an ordinary error answer
    answer = gateway.post('/run', {'SIGNATURE': 'failing', 'FAIL_AT': 0})
    assert answer.status == 500 and 'TokenizerGone' in answer.json()['ERROR']
    status, _headers, lines = stream_lines(gateway, {'SIGNATURE': 'failing', 'FAIL_AT': 9})
    assert [line.get('predict_result') for line in lines] == [0, 10, 20, 30, 40, None]
    assert lines[-1]['chunks'] == 5


def test_timeout_applies_to_each_gap_between_chunks(gateway):
    # the chunk after the 4 s stall never came: the 1 s gap timer cut the stream first
    status, _headers, lines = stream_lines(gateway, {'SIGNATURE': 'stalling', 'STALL': 4})
    assert status == 200
    assert lines[0] == {'predict_result': 'first'}
    assert 'TIMEOUT of 1s' in lines[-1]['ERROR'] and lines[-1]['chunks'] == 1 and lines[-1]['status'] == 504


def test_streams_go_through_replicas_and_remote_urls(gateway, tmp_path):
    pids = set()
    for index, name in enumerate(('gated_replicas', 'gated_replicas', 'gated_remote')):
        folder = tmp_path / str(index)
        folder.mkdir()
        (folder / 'go1').write_text('')
        # a remote server counts as offline until a health round saw it answer
        status, _headers, lines = wait_until(
            lambda: stream_lines(gateway, {'SIGNATURE': name, 'FOLDER': str(folder), 'NR_CHUNKS': 2}),
            lambda answer: answer[0] != 503, timeout=20, what='{} taking requests'.format(name))
        assert status == 200, lines
        assert [line['predict_result']['index'] for line in lines[:2]] == [0, 1] and lines[2]['chunks'] == 2
        pids.add(lines[0]['predict_result']['pid'])
    assert len(pids) >= 2  # the remote URL is another process than the replicas


def test_curl_no_buffer_reads_the_stream(gateway, tmp_path):
    import subprocess
    (tmp_path / 'go1').write_text('')
    out = subprocess.run(['curl', '-sN', gateway.url('/run'), '-H', 'Accept: text/event-stream', '-d',
                          json.dumps({'SIGNATURE': 'gated', 'FOLDER': str(tmp_path), 'NR_CHUNKS': 2})],
                         capture_output=True, timeout=20, check=True).stdout.decode()
    assert out.startswith('data: {"predict_result": {"index": 0')
    assert '\n\nevent: end\ndata: {' in out


def test_metrics_show_time_to_first_chunk_and_chunks_per_answer(gateway, tmp_path):
    (tmp_path / 'go1').write_text('')
    stream_lines(gateway, {'SIGNATURE': 'gated', 'FOLDER': str(tmp_path), 'NR_CHUNKS': 2})
    text = gateway.get('/metrics').text
    assert 'bis_stream_first_chunk_seconds_count{endpoint="gated"}' in text
    assert 'bis_stream_chunks_sum{endpoint="gated"}' in text


def test_a_100_mb_stream_to_a_slow_client_does_not_grow_the_gateway(gateway, tmp_path):
    chunk_bytes, count = 64 * 1024, 1600  # 100 MiB of chunks
    progress = tmp_path / 'progress'
    gateway_process = psutil.Process(gateway.proc.pid)
    stream_lines(gateway, {'SIGNATURE': 'big', 'NR_CHUNKS': 64, 'CHUNK_BYTES': chunk_bytes})  # warm
    baseline = gateway_process.memory_info().rss
    peak = baseline
    body = json.dumps({'SIGNATURE': 'big', 'NR_CHUNKS': count, 'CHUNK_BYTES': chunk_bytes,
                       'PROGRESS': str(progress)}).encode()
    sock = socket.create_connection(('127.0.0.1', gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b'POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n'
                 b'Content-Length: ' + str(len(body)).encode() + b'\r\n\r\n' + body)
    received = sock.recv(65536)
    assert received.startswith(b'HTTP/1.1 200')
    # The client stops reading. For two seconds we watch what a gateway without flow control
    # would do: read the child's whole answer into memory.
    stalled_until = time.monotonic() + 2.0
    while time.monotonic() < stalled_until:
        peak = max(peak, gateway_process.memory_info().rss)
        time.sleep(0.1)
    produced_while_stalled = int(progress.read_text()) if progress.exists() else 0
    total = len(received)
    tail = b''
    sock.settimeout(30)
    while True:
        data = sock.recv(1024 * 1024)
        if not data:
            break
        total += len(data)
        tail = (tail + data)[-4096:]
        if total % (8 * 1024 * 1024) < len(data):
            peak = max(peak, gateway_process.memory_info().rss)
    sock.close()
    peak = max(peak, gateway_process.memory_info().rss)
    grown_mb = (peak - baseline) / (1024 * 1024)
    print('100 MiB stream: the child made {} of {} chunks while the client stalled; gateway RSS grew '
          '{:.1f} MiB at most'.format(produced_while_stalled, count, grown_mb))
    assert produced_while_stalled < count // 2  # the child was paused, not drained into the gateway
    assert total > count * chunk_bytes
    summary = json.loads(tail.rstrip(b'\r\n0').rstrip().rsplit(b'\n', 1)[-1].split(b'\r\n')[-1])
    assert summary['chunks'] == count
    assert grown_mb < 8, grown_mb


def test_the_python_client_iterates_the_chunks_as_they_come(gateway, tmp_path):
    import asyncio
    from bis_twisted.client import AsyncClient, Client, EndpointError, GatewayTimeout

    with Client(gateway.url('')) as bis:
        words = bis.stream('gated', FOLDER=str(tmp_path), NR_CHUNKS=2)
        assert next(words)['word'] == 'w0'
        assert not (tmp_path / 'go1').exists()  # the first chunk came before the second yield
        (tmp_path / 'go1').write_text('')
        assert [chunk['word'] for chunk in words] == ['w1']
        with pytest.raises(EndpointError, match='TokenizerGone'):
            list(bis.stream('failing', FAIL_AT=1))
        assert list(bis.stream('plain', X=4)) == [{'doubled': 8}]
        with pytest.raises(GatewayTimeout, match='TIMEOUT of 1s'):
            list(bis.stream('stalling', STALL=3))

    async def read_async():
        async with AsyncClient(gateway.url('')) as bis:
            return [chunk async for chunk in bis.stream('failing', FAIL_AT=9)]

    assert asyncio.run(read_async()) == [0, 10, 20, 30, 40]


def wait_replicas_ready(gateway, name):
    wait_until(lambda: gateway.server(name)['REPLICAS'], lambda rs: all(r['ONLINE'] for r in rs), timeout=30,
               what='every replica of {} ONLINE'.format(name))


def test_a_replica_that_dies_before_the_first_chunk_has_the_request_sent_to_another(gateway, tmp_path):
    wait_replicas_ready(gateway, 'crashy')
    status, _headers, lines = stream_lines(gateway, {'SIGNATURE': 'crashy', 'FOLDER': str(tmp_path), 'CRASH': 'before'})
    assert status == 200, lines
    assert lines[-1]['chunks'] == 2 and 'ERROR' not in lines[-1]
    started = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('started-'))
    assert len(started) == 2  # the dead replica, then the other one, which answered
    assert 'started-{}'.format(lines[0]['predict_result']) in started


def test_a_stream_cut_after_its_first_chunk_is_never_sent_again(gateway, tmp_path):
    wait_replicas_ready(gateway, 'crashy')
    body = {'SIGNATURE': 'crashy', 'FOLDER': str(tmp_path), 'CRASH': 'after'}
    with httpx.Client(timeout=10) as client:
        with client.stream('POST', gateway.url('/run'), json=body) as answer:
            lines = answer.iter_lines()
            first = json.loads(next(lines))
            (tmp_path / 'go1').write_text('')
            rest = [json.loads(line) for line in lines if line]
    assert isinstance(first['predict_result'], int)
    assert len(rest) == 1
    assert 'in the middle of its stream' in rest[0]['ERROR'] and rest[0]['chunks'] == 1 and rest[0]['status'] == 502
    started = [p.name for p in tmp_path.iterdir() if p.name.startswith('started-')]
    assert started == ['started-{}'.format(first['predict_result'])]  # no other replica ran it
