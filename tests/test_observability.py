"""Metrics, OpenAPI, request ids: unit tests on a Clock, and the real gateway end to end."""

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from bis_twisted.gateway.metrics import UNKNOWN, GatewayMetrics, RecentStats
from fakes import FakeFleet
from gateway_process import start_gateway
from procs import REPO_ROOT, Processes, http, wait_until

DEMO2 = {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}


def samples(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_recent_stats_closes_windows_with_rate_and_p99():
    clock = Clock()
    stats = RecentStats(clock, window=5.0)
    for i in range(100):
        stats.observe(200, 0.001 * (i + 1))  # 1..100 ms
    stats.observe(503, 0.5)
    assert stats.points() == []  # the window is still open
    clock.advance(5.0)
    [point] = stats.points()
    assert point['rps'] == pytest.approx(101 / 5.0)
    assert point['errors'] == 1
    assert point['p99_ms'] == 100.0
    clock.advance(12.0)  # two empty windows follow
    assert [p['rps'] for p in stats.points()] == [101 / 5.0, 0.0, 0.0]


def test_gateway_metrics_count_exactly_and_fold_unknown_signatures():
    fleet = FakeFleet(['a'])
    fleet.servers['a'].targets = []  # an endpoint with no process to measure
    metrics = GatewayMetrics(fleet, supervisor=None, clock=Clock())
    for _ in range(3):
        metrics.observe('a', 200, 0.01)
    metrics.observe('a', 400, 0.002)
    metrics.observe('typo-1', 404, 0.001)
    metrics.observe('typo-2', 404, 0.001)
    metrics.observe('a', 200, 0.01, protocol='v2')
    found = samples(metrics.render().decode())
    run = ('protocol', 'run')
    assert found[('bis_requests_total', frozenset({('endpoint', 'a'), ('code', '200'), run}))] == 3
    assert found[('bis_requests_total', frozenset({('endpoint', 'a'), ('code', '200'), ('protocol', 'v2')}))] == 1
    assert found[('bis_requests_total', frozenset({('endpoint', 'a'), ('code', '400'), run}))] == 1
    assert found[('bis_requests_total', frozenset({('endpoint', UNKNOWN), ('code', '404'), run}))] == 2
    assert found[('bis_request_latency_seconds_count', frozenset({('endpoint', 'a'), run}))] == 4
    assert found[('bis_request_latency_seconds_count', frozenset({('endpoint', 'a'), ('protocol', 'v2')}))] == 1
    assert not any(('endpoint', 'typo-1') in labels for _, labels in found)


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo2',
              'CONFIG_ENDPOINTS': {'dummy_model_demo2': DEMO2}}
    with Processes() as group:
        yield start_gateway(group, tmp_path_factory.mktemp('obs'), config=config)


def test_metrics_after_known_traffic(gateway):
    before = samples(gateway.get('/metrics').text)
    for value in range(7):
        assert gateway.run('dummy_model_demo2', INPUT_VALUE=value).status == 200
    for _ in range(3):
        assert gateway.run('dummy_model_demo2', WRONG=1).status == 400
    for name in ('nope', 'also-nope'):
        assert gateway.run(name).status == 404
    answer = gateway.get('/metrics')
    assert answer.status == 200 and answer.headers['Content-Type'].startswith('text/plain')
    after = samples(answer.text)

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert delta('bis_requests_total', endpoint='dummy_model_demo2', code='200', protocol='run') == 7
    assert delta('bis_requests_total', endpoint='dummy_model_demo2', code='400', protocol='run') == 3
    assert delta('bis_requests_total', endpoint=UNKNOWN, code='404', protocol='run') == 2
    assert delta('bis_request_latency_seconds_count', endpoint='dummy_model_demo2', protocol='run') == 10
    labels = frozenset({('endpoint', 'dummy_model_demo2')})
    assert after[('bis_server_online', labels)] == 1
    assert after[('bis_requests_in_flight', labels)] == 0
    assert after[('bis_server_queue_depth', labels)] == 0
    assert after[('bis_server_restarts_total', labels)] == 0
    assert after[('bis_server_memory_bytes', labels)] > 10 * 2 ** 20
    assert after[('process_resident_memory_bytes', frozenset())] > 10 * 2 ** 20


def test_request_id_round_trip_to_the_model_server_and_its_notifications(gateway):
    answer = http('POST', gateway.url('/run'), body={'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 3},
                  headers={'X-Request-Id': 'client-req-42'})
    assert answer.status == 200
    assert answer.headers['X-Request-Id'] == 'client-req-42'
    assert answer.json()['request_id'] == 'client-req-42'
    call_id = str(answer.json()['call_id'])
    notes = gateway.post('/notifications', {'SIGNATURE': 'dummy_model_demo2'}).json()
    assert [n['REQUEST_ID'] for n in notes[call_id]] == ['client-req-42']


def test_request_id_is_made_when_missing_or_unusable(gateway):
    made = gateway.run('dummy_model_demo2', INPUT_VALUE=1)
    rid = made.headers['X-Request-Id']
    assert len(rid) == 32 and int(rid, 16) >= 0 and made.json()['request_id'] == rid
    odd = http('POST', gateway.url('/run'), body={'SIGNATURE': 'nope'}, headers={'X-Request-Id': 'has spaces; and <junk>'})
    assert odd.status == 404
    assert odd.headers['X-Request-Id'] != 'has spaces; and <junk>'
    assert odd.json()['request_id'] == odd.headers['X-Request-Id']


def test_hook_error_log_line_carries_the_request_id(gateway, tmp_path):
    http('POST', gateway.url('/run'), body={'SIGNATURE': 'dummy_model_demo2', 'WRONG': 1},
         headers={'X-Request-Id': 'trace-me-7'})
    wait_until(lambda: gateway.proc.stdout_lines, lambda lines: any(
        'trace-me-7' in line and '_pre_process failed' in line for line in lines), what='log line with the request id')


def test_metrics_can_require_the_admin_token(processes, tmp_path):
    config = {'METRICS_REQUIRE_TOKEN': True, 'CONFIG_ENDPOINTS': {'dummy_model_demo2': DEMO2}}
    gateway = start_gateway(processes, tmp_path, config=config, env={'BIS_ADMIN_TOKEN': 's3cret-observability-token'})
    assert gateway.get('/metrics').status == 401
    assert http('GET', gateway.url('/metrics'), headers={'Authorization': 'Bearer s3cret-observability-token'}).status == 200


def test_openapi_document_holds_against_the_live_gateway_with_schemathesis(processes, tmp_path):
    schemathesis = os.path.join(os.path.dirname(sys.executable), 'schemathesis')
    assert os.path.exists(schemathesis), 'schemathesis is in the test extra: pip install -e .[test]'
    endpoints = tmp_path / 'endpoints'
    shutil.copytree(os.path.join(REPO_ROOT, 'bench', 'endpoints'), endpoints)
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'echo', 'CONFIG_ENDPOINTS': {'echo': {'NR_WORKERS': 2}}}
    # with a token set, the admin routes (shutdown, kill_server) answer 401 to the fuzzer
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints,
                            env={'BIS_ADMIN_TOKEN': 'not-given-to-the-fuzzer'})
    done = subprocess.run(
        [schemathesis, 'run', gateway.url('/openapi.json'), '--checks',
         'not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance',
         '--max-examples', '15', '--generation-deterministic'],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert ' passed' in done.stdout
    assert gateway.get('/health').status == 200


def test_metrics_off_means_no_metrics_route_and_an_empty_chart(processes, tmp_path):
    config = {'METRICS': False, 'CONFIG_ENDPOINTS': {'dummy_model_demo2': DEMO2}}
    gateway = start_gateway(processes, tmp_path, config=config)
    answer = gateway.get('/metrics')
    assert answer.status == 404 and '"METRICS": false' in answer.json()['ERROR']
    assert gateway.get('/stats').json()['POINTS'] == []


def test_show_packs_logs_the_installed_packages_at_start(processes, tmp_path):
    config = {'CONFIG_ENDPOINTS': {'dummy_model_demo2': DEMO2}}
    gateway = start_gateway(processes, tmp_path, config=config, env={'AID_APP_SHOW_PACKS': 'Yes'})
    assert any(line.strip().lower().startswith('twisted==') for line in gateway.proc.stdout_lines)


def test_recent_stats_have_p50_and_windows_aligned_to_the_clock():
    clock = Clock()
    clock.advance(12.0)  # mid-window: the first window still starts at 10
    stats = RecentStats(clock, window=5.0)
    for ms in (1, 2, 3, 4, 100):
        stats.observe(200, ms / 1000)
    clock.advance(3.0)
    [point] = stats.points()
    assert point['t'] == 15.0
    assert point['p50_ms'] == 3.0 and point['p99_ms'] == 100.0


def test_stats_are_kept_per_endpoint_and_an_unknown_signature_only_in_the_total():
    fleet = SimpleNamespace(servers={'a': SimpleNamespace(targets=[]), 'b': SimpleNamespace(targets=[])})
    clock = Clock()
    metrics = GatewayMetrics(fleet, supervisor=None, clock=clock)
    for _ in range(10):
        metrics.observe('a', 200, 0.010)
    metrics.observe('a', 502, 0.001)
    metrics.observe('b', 200, 0.200)
    metrics.observe('typo', 404, 0.001)
    clock.advance(5.0)
    stats = metrics.stats()
    assert stats['WINDOW_SECONDS'] == 5.0
    [total] = stats['POINTS']
    assert total['rps'] == 13 / 5.0 and total['errors'] == 1 and total['client_errors'] == 1  # the 404
    [a] = stats['ENDPOINTS']['a']
    [b] = stats['ENDPOINTS']['b']
    assert (a['rps'], a['errors'], a['client_errors'], a['p50_ms']) == (11 / 5.0, 1, 0, 10.0)
    assert (b['rps'], b['errors'], b['p50_ms'], b['p99_ms']) == (1 / 5.0, 0, 200.0, 200.0)
    assert sorted(stats['ENDPOINTS']) == ['a', 'b']


# -- stalls: reactor lag and collection pauses -------------------------------------------------
def test_stall_watch_records_how_late_its_timer_ran_and_each_collection():
    import gc

    from bis_twisted.shared.stalls import StallWatch

    clock = Clock()
    watch = StallWatch(clock, interval=0.1)
    watch.startService()
    try:
        clock.advance(0.1)  # on time
        clock.advance(0.35)  # the reactor was held up: the timer ran 0.25 s late
        assert watch.lag.count == 2 and watch.lag.largest == pytest.approx(0.25)
        summary = watch.summary()['REACTOR_LAG']
        assert summary['COUNT'] == 2 and summary['MAX_MS'] == 250.0 and summary['>50ms'] == 1
        gc.collect()
        assert watch.gc_pauses[2].count >= 1 and watch.gc_pauses[2].largest > 0
        assert watch.summary()['GC_PAUSES']['2']['COUNT'] >= 1
    finally:
        watch.stopService()
    assert watch._collection not in gc.callbacks and not clock.getDelayedCalls()
    counted = watch.gc_pauses[2].count
    gc.collect()
    assert watch.gc_pauses[2].count == counted  # stopped: no longer counting


def test_the_gateway_exports_its_stalls_and_a_model_server_reports_its_own(gateway):
    assert gateway.run('dummy_model_demo2', INPUT_VALUE=1).status == 200
    exported = samples(gateway.get('/metrics').text)
    assert exported[('bis_reactor_lag_seconds_count', frozenset())] >= 1
    assert ('bis_reactor_lag_max_seconds', frozenset()) in exported
    generations = {dict(labels).get('generation') for name, labels in exported if name == 'bis_gc_pause_seconds_count'}
    assert generations and generations <= {'0', '1', '2'}
    port = gateway.server('dummy_model_demo2')['PORT']
    stalls = http('GET', 'http://127.0.0.1:{}/health'.format(port)).json()['STALLS']
    assert stalls['REACTOR_LAG']['COUNT'] >= 1 and set(stalls['REACTOR_LAG']) == {
        'COUNT', 'MAX_MS', 'TOTAL_MS', '>5ms', '>50ms'}


def test_the_request_tallies_expose_what_prometheus_clients_counter_and_histogram_did():
    import re

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from bis_twisted.gateway.metrics import LATENCY_BUCKETS, _RequestTally

    observations = [('a', 200, 'run', 0.0004), ('a', 200, 'run', 0.001), ('a', 200, 'run', 0.0011),
                    ('a', 503, 'run', 0.25), ('b', 200, 'v2', 75.0), ('a', 200, 'v2', 0.01), ('a', 200, 'run', 2.5)]
    reference = CollectorRegistry()
    requests = Counter('bis_requests', 'Inference requests answered, by endpoint, HTTP status and protocol ("run": '
                       '/run, "v2": the Open Inference Protocol\'s infer)', ['endpoint', 'code', 'protocol'],
                       registry=reference)
    latency = Histogram('bis_request_latency_seconds', 'Time to answer an inference request, by endpoint and '
                        'protocol', ['endpoint', 'protocol'], buckets=LATENCY_BUCKETS, registry=reference)
    tallied = CollectorRegistry()
    tally = _RequestTally()
    tallied.register(tally)
    for endpoint, status, protocol, seconds in observations:
        requests.labels(endpoint, str(status), protocol).inc()
        latency.labels(endpoint, protocol).observe(seconds)
        tally.observe(endpoint, status, protocol, seconds)

    def lines(registry):
        # the same samples, whatever their order; a _created value is the time it was made
        text = re.sub(r'(_created\{[^}]*\}) \S+', r'\1 <time>', generate_latest(registry).decode())
        return sorted(text.splitlines())

    assert lines(tallied) == lines(reference)
