"""The fleet's routing on a MemoryReactor + Clock: a real ``Supervisor`` whose children are
fakes (ready when the test feeds them the ready line), a fake HTTP client whose answers are
Deferreds the test fires, and the gateway's ``/run`` through ``StubTreq``. No process, no
socket."""

import json

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated

from bis_twisted.errors import BadGateway, GatewayTimeout, ServiceUnavailable, UnknownSignature
from bis_twisted.gateway.routes import Gateway
from bis_twisted.gateway.proxy import ChildConnectionLost
from bis_twisted.shared.web import Answer
from bis_twisted.gateway.supervisor import Supervisor
from bis_twisted.gateway.health import HealthMonitor
from fakes import described, failure_of, in_flight, result_of, send

GATEWAY_FIELDS = {'ver-app', 'ver-lib', 'hostname', 'worker_id', 'time', 'gw-uptime'}


THREE = {'demo': {'REPLICAS': 3}}  # ports 5003, 5004, 5005
CHILDREN = ['demo#0', 'demo#1', 'demo#2']


# -- least busy ----------------------------------------------------------------------------------
def test_least_busy_ready_replica_gets_the_request_and_ties_go_to_the_first(make_fleet, reactor, children):
    fleet = make_fleet(THREE)
    reactor.ready(*CHILDREN)
    for _ in range(4):
        send(fleet)
    # all idle: the first; then each next one; then, all at 1, the first again
    assert children.ports == [5003, 5004, 5005, 5003]
    children.calls[1].answer()
    assert in_flight(fleet) == [2, 0, 1]
    send(fleet)
    assert children.ports[-1] == 5004  # the one with 0 in flight
    assert in_flight(fleet) == [2, 1, 1]
    send(fleet)
    assert children.ports[-1] == 5004  # tie between 5004 and 5005: the first


def test_replica_that_is_not_ready_is_never_picked(make_fleet, reactor, children):
    fleet = make_fleet(THREE)
    reactor.ready('demo#1', 'demo#2')  # demo#0 is still loading
    for _ in range(6):
        send(fleet)
    assert sorted(children.ports) == [5004, 5004, 5004, 5005, 5005, 5005]
    # one that died is skipped too, the moment its exit is seen
    reactor.child('demo#2').exit(ProcessTerminated(signal=9))
    for _ in range(3):
        send(fleet)
    assert children.ports[6:] == [5004, 5004, 5004]
    # ready at last: it has nothing in flight, so it is the least busy
    reactor.ready('demo#0')
    send(fleet)
    assert children.ports[-1] == 5003


@pytest.mark.parametrize('situation,why,retry_after', [
    ('starting', "server 'demo' is starting (loading its workers); retry shortly", 1),
    ('restarting', "server 'demo' is restarting after: killed by signal 9; retry shortly", 1),
    # an operator's stop is not something to wait for: no Retry-After, and what to do
    ('killed', "server 'demo' is stopped (disabled or killed); POST /start_server to start it", None),
    ('disabled', "server 'demo' is stopped (disabled or killed); POST /start_server to start it", None),
    ('failed', "server 'demo' failed 5 times in a row before it was ready: exit code 2: "
               "ModuleNotFoundError: No module named 'torch'; it is still retried, but needs a fix (see its log)", None),
])
def test_no_replica_ready_answers_503_saying_why(make_fleet, reactor, children, situation, why, retry_after):
    entry = {'REPLICAS': 2, 'DISABLED': situation == 'disabled'}
    fleet = make_fleet({'demo': entry})
    if situation == 'restarting':
        reactor.ready('demo#0', 'demo#1')
        for name in ('demo#0', 'demo#1'):
            reactor.child(name).exit(ProcessTerminated(signal=9))
    elif situation == 'killed':
        reactor.ready('demo#0', 'demo#1')
        result_of(fleet.stop(fleet.servers['demo']))
    elif situation == 'failed':
        for _ in range(Supervisor.crash_loop_after):
            for name in ('demo#0', 'demo#1'):
                reactor.child(name).proto.childDataReceived(2, b"ModuleNotFoundError: No module named 'torch'\n")
                reactor.child(name).exit(ProcessTerminated(exitCode=2))
            reactor.advance(Supervisor.maxRestartDelay)
        # the last try is still loading (it is retried): still failed, until it is ready
    error = failure_of(send(fleet), ServiceUnavailable)
    assert (error.status, error.retry_after) == (503, retry_after)
    assert error.message == why
    assert children.calls == []


# -- refused connections ---------------------------------------------------------------------------
def test_replica_that_refuses_passes_the_same_request_to_the_next_which_answers(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    children.refusing.add(b'http://127.0.0.1:5003/run')  # died a moment ago; exit not seen yet
    d = send(fleet, payload=b'{"INPUT_VALUE": 7}')
    assert children.refused == [b'http://127.0.0.1:5003/run']
    assert [(c.url, c.payload) for c in children.calls] == [(b'http://127.0.0.1:5004/run', b'{"INPUT_VALUE": 7}')]
    children.calls[0].answer(worker_id=0)
    assert result_of(d) == Answer(200, {'predict_result': 'ok', 'worker_id': 0})
    assert in_flight(fleet) == [0, 0]


def test_single_replica_that_refuses_answers_503(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {}})
    reactor.ready('demo')
    children.refusing.add(b'http://127.0.0.1:5003/run')
    error = failure_of(send(fleet), ServiceUnavailable)
    assert error.status == 503
    assert error.message.startswith("server 'demo' is not accepting connections (ConnectionRefusedError)")
    assert children.refused == [b'http://127.0.0.1:5003/run']  # tried once, not in a loop
    assert fleet.when_idle().called  # nothing left counted in flight


def test_every_replica_refusing_answers_503_after_one_try_each(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    children.refusing.update({b'http://127.0.0.1:5003/run', b'http://127.0.0.1:5004/run'})
    error = failure_of(send(fleet), ServiceUnavailable)
    assert 'not accepting connections' in error.message
    assert sorted(children.refused) == [b'http://127.0.0.1:5003/run', b'http://127.0.0.1:5004/run']
    assert in_flight(fleet) == [0, 0]


def test_request_a_crashing_replica_dropped_is_sent_once_to_another(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    d = send(fleet, payload=b'{"INPUT_VALUE": 3}')
    children.calls[0].deferred.errback(ChildConnectionLost(
        "server 'demo' closed the connection before answering (Connection was closed cleanly.); it may have crashed"))
    assert [(c.url, c.payload) for c in children.calls] == [(b'http://127.0.0.1:5003/run', b'{"INPUT_VALUE": 3}'),
                                                         (b'http://127.0.0.1:5004/run', b'{"INPUT_VALUE": 3}')]
    children.calls[1].answer(worker_id=0)
    assert result_of(d).status == 200
    # sent twice at most: a second drop is the client's 502
    reactor.advance(10)  # the replica that dropped one is trusted again
    d = send(fleet)
    children.calls[2].deferred.errback(ChildConnectionLost("server 'demo' closed the connection"))
    children.calls[3].deferred.errback(ChildConnectionLost("server 'demo' closed the connection"))
    assert failure_of(d, BadGateway).status == 502
    assert len(children.calls) == 4 and in_flight(fleet) == [0, 0]


def test_no_other_replica_ready_leaves_the_dropped_request_a_502(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0')
    d = send(fleet)
    children.calls[0].deferred.errback(ChildConnectionLost("server 'demo' closed the connection"))
    assert failure_of(d, BadGateway).status == 502 and len(children.calls) == 1


def test_replica_that_dropped_a_request_gets_no_new_one_before_it_is_back(make_fleet, reactor, children):
    # A SIGKILLed child's connections close some milliseconds before the supervisor sees it
    # exit, and in between its port may still take connections: a request sent there then is a
    # second 502 for a request that was never in flight on it (test_replicas_e2e's kill test).
    # RETRY_ON_CRASH false: a _predict not safe to run twice answers 502 instead of a retry.
    fleet = make_fleet({'demo': {'REPLICAS': 2, 'RETRY_ON_CRASH': False}})
    reactor.ready('demo#0', 'demo#1')
    crashed = send(fleet)
    # what the proxy raises for a dropped connection (a plain BadGateway is a garbled answer)
    children.calls[0].deferred.errback(ChildConnectionLost(
        "server 'demo' closed the connection before answering (Connection was closed cleanly.); it may have crashed"))
    assert failure_of(crashed, BadGateway).status == 502
    send(fleet)  # the supervisor has not seen demo#0 exit yet
    assert children.ports == [5003, 5004], 'the next request went to the replica that had just dropped one'
    # once it was restarted and said it is ready, it is the least busy again
    reactor.child('demo#0').exit(ProcessTerminated(signal=9))
    reactor.advance(Supervisor.minRestartDelay)
    reactor.ready('demo#0')
    send(fleet)
    assert children.ports[-1] == 5003


# -- in-flight counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize('outcome', ['success', 'bad gateway', 'timeout', 'cancelled'])
def test_in_flight_count_returns_to_zero_whatever_the_outcome(make_fleet, reactor, children, outcome):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    first, second = send(fleet), send(fleet)
    assert in_flight(fleet) == [1, 1]
    idle = fleet.when_idle()
    assert not idle.called
    for d, call in ((first, children.calls[0]), (second, children.calls[1])):
        if outcome == 'success':
            call.answer()
            assert result_of(d).status == 200
        elif outcome == 'bad gateway':
            call.deferred.errback(BadGateway("server 'demo' closed the connection before answering"))
            assert failure_of(d, BadGateway).status == 502
        elif outcome == 'timeout':
            call.deferred.errback(GatewayTimeout("server 'demo' did not answer within its TIMEOUT of 60s"))
            assert failure_of(d, GatewayTimeout).status == 504
        else:  # the gateway's client went away: the call to the child is abandoned
            d.cancel()
            failure_of(d, defer.CancelledError)
            assert call.cancelled
    assert in_flight(fleet) == [0, 0]
    assert idle.called  # the shutdown drain sees the gateway idle
    # a request the child may have run is never sent twice
    assert len(children.calls) == 2 and children.refused == []


# -- remote servers (URLS) ---------------------------------------------------------------------------
REMOTES = {'far': {'URLS': ['http://10.9.0.1:7000/run', 'http://10.9.0.2:7000/run'], 'HEALTH_INTERVAL': 2}}


def start_health(fleet, reactor, rss_of=None):
    monitor = HealthMonitor(fleet.topology, fleet.supervisor, fleet.probe, fleet.operations, reactor=reactor,
                            rss_of=rss_of)
    monitor.startService()  # the first round runs at once
    return monitor


def test_remote_that_misses_its_ping_is_skipped_and_comes_back_when_it_answers(make_fleet, reactor, children):
    fleet = make_fleet(REMOTES)
    children.down.add(b'http://10.9.0.1:7000')
    support = start_health(fleet, reactor)
    try:
        assert [r['STATE'] for r in described(fleet, 'far')['REPLICAS']] == ['offline', 'online']
        for _ in range(3):
            send(fleet, 'far')
        assert [c.url for c in children.calls] == [b'http://10.9.0.2:7000/run'] * 3
        children.down.clear()
        reactor.advance(2)  # the next ping round
        send(fleet, 'far')
        assert children.calls[-1].url == b'http://10.9.0.1:7000/run'
    finally:
        support.stopService()


def test_every_remote_offline_answers_503_naming_the_urls(make_fleet, reactor, children):
    fleet = make_fleet({'far': {'URLS': ['http://10.9.0.1:7000/run']}})
    children.down.add(b'http://10.9.0.1:7000')
    support = start_health(fleet, reactor)
    try:
        error = failure_of(send(fleet, 'far'), ServiceUnavailable)
        assert error.message == "server 'far' is not answering at http://10.9.0.1:7000/run; retry shortly"
        assert children.calls == []
    finally:
        support.stopService()


def test_remote_that_refuses_is_taken_out_and_the_request_goes_to_the_next(make_fleet, reactor, children):
    fleet = make_fleet(REMOTES)
    children.refusing.add(b'http://10.9.0.1:7000/run')
    send(fleet, 'far')
    assert [c.url for c in children.calls] == [b'http://10.9.0.2:7000/run']
    children.calls[0].answer()
    # not tried again until a ping says it is back
    send(fleet, 'far')
    assert children.refused == [b'http://10.9.0.1:7000/run']
    assert children.calls[-1].url == b'http://10.9.0.2:7000/run'


def test_urls_keep_their_path_as_the_execution_path(make_fleet, reactor, children):
    fleet = make_fleet({'a': {'URLS': ['http://127.0.0.2:7000/run']},
                        'b': {'URLS': ['http://127.0.0.3:7001/v1/predict/']},
                        'c': {'URLS': ['http://127.0.0.4:7002']}})
    for name in ('a', 'b', 'c'):
        send(fleet, name)
    assert [c.url for c in children.calls] == [b'http://127.0.0.2:7000/run', b'http://127.0.0.3:7001/v1/predict',
                                              b'http://127.0.0.4:7002/run']
    assert described(fleet, 'a')['URLS'] == ['http://127.0.0.2:7000/run']
    assert described(fleet, 'b')['URLS'] == ['http://127.0.0.3:7001/v1/predict']
    assert described(fleet, 'b')['REPLICAS'][0]['URL'] == 'http://127.0.0.3:7001'


def test_unknown_signature_is_404_listing_the_servers(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}, 'other': {}})
    error = failure_of(send(fleet, 'nope'), UnknownSignature)
    assert error.status == 404
    assert error.message == "unknown SIGNATURE 'nope'; available: demo, other"


# -- through the gateway's routes ---------------------------------------------------------------------
@pytest.fixture
def gateway_of(reactor, children):
    def make(fleet):
        children.answer_at_once = {'predict_result': {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'},
                                   'worker_id': 0, 'call_id': 1, 'signature': 'h.demo.DemoWorker.0'}
        return StubTreq(Gateway(fleet, reactor=reactor).resource())
    return make


def post_run(stub, body):
    response = result_of(stub.post('http://gateway/run', data=json.dumps(body).encode(),
                                   headers={b'Content-Type': [b'application/json']}))
    return response, result_of(treq.json_content(response))


def test_gateway_run_to_two_replicas_answers_the_childs_body_with_gateway_fields(make_fleet, reactor, gateway_of,
                                                                                 children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    stub = gateway_of(fleet)
    response, body = post_run(stub, {'SIGNATURE': 'demo', 'INPUT_VALUE': 4})
    assert response.code == 200
    assert body['predict_result'] == {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
    assert body['signature'] == 'h.demo.DemoWorker.0' and body['worker_id'] == 0
    assert GATEWAY_FIELDS <= set(body)
    assert json.loads(children.calls[0].payload) == {'SIGNATURE': 'demo', 'INPUT_VALUE': 4}
    # replica 0 not ready: the other one serves
    reactor.child('demo#0').exit(ProcessTerminated(signal=9))
    response, body = post_run(stub, {'SIGNATURE': 'demo', 'INPUT_VALUE': 4})
    assert response.code == 200 and body['port'] == 5004


def test_gateway_run_with_unknown_signature_is_404(make_fleet, reactor, gateway_of):
    stub = gateway_of(make_fleet({'demo': {'REPLICAS': 2}}))
    response, body = post_run(stub, {'SIGNATURE': 'nope'})
    assert response.code == 404
    assert body['ERROR'] == "unknown SIGNATURE 'nope'; available: demo"


def test_unknown_signature_offers_only_the_servers_one_can_call_and_the_closest_name(make_fleet, reactor,
                                                                                   gateway_of):
    stub = gateway_of(make_fleet({'demo': {}, 'iris_classifier': {}, 'old_model': {'DISABLED': True}}))
    response, body = post_run(stub, {'SIGNATURE': 'iris_clasifier'})
    assert response.code == 404
    assert body['ERROR'] == "unknown SIGNATURE 'iris_clasifier'; did you mean 'iris_classifier'?; available: demo, " \
                            "iris_classifier"
    response, body = post_run(stub, {'signature': 'demo'})
    assert response.code == 400
    assert body['ERROR'].startswith("SIGNATURE is missing; the body has 'signature': the key is SIGNATURE, in capitals")


def test_gateway_run_with_every_replica_down_is_503_with_retry_after(make_fleet, reactor, gateway_of, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    reactor.ready('demo#0', 'demo#1')
    for name in ('demo#0', 'demo#1'):
        reactor.child(name).exit(ProcessTerminated(signal=9))
    stub = gateway_of(fleet)
    response, body = post_run(stub, {'SIGNATURE': 'demo', 'INPUT_VALUE': 1})
    assert response.code == 503
    assert response.headers.getRawHeaders(b'Retry-After') == [b'1']
    assert body['ERROR'] == "server 'demo' is restarting after: killed by signal 9; retry shortly"
    assert GATEWAY_FIELDS <= set(body)
    assert children.calls == []
    # back after the restart delay and its ready line
    reactor.advance(Supervisor.minRestartDelay)
    reactor.ready('demo#0')
    response, body = post_run(stub, {'SIGNATURE': 'demo', 'INPUT_VALUE': 1})
    assert response.code == 200 and body['port'] == 5003


# -- the health loop: always on, after ready only ------------------------------------------------------
def test_health_loop_runs_without_support_entries_and_replaces_a_hung_child(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'HEALTH_INTERVAL': 5}})
    monitor = start_health(fleet, reactor)
    try:
        reactor.ready('demo')
        first = reactor.child('demo')
        children.down.add(b'http://127.0.0.1:5003')  # SIGSTOP-ed: no answer
        reactor.advance(5)
        reactor.advance(5)
        assert first.signals == []  # two misses: not yet
        reactor.advance(5)
        assert first.signals == ['KILL']
        assert fleet.supervisor.status('demo').last_error == \
            'did not answer 3 health checks in a row (5s apart); replaced'
    finally:
        monitor.stopService()


def test_with_the_default_interval_a_hung_child_is_replaced_three_beats_after_it_stops_answering(
        make_fleet, reactor, children):
    fleet = make_fleet({'demo': {}})  # HEALTH_INTERVAL: its default, 1 s
    monitor = start_health(fleet, reactor)
    try:
        reactor.ready('demo')
        first = reactor.child('demo')
        children.hung.add(b'http://127.0.0.1:5003')
        reactor.advance(1)  # a ping goes out and is never answered
        assert len(children.unanswered) == 1
        reactor.advance(1)
        reactor.advance(1)
        assert first.signals == [] and len(children.unanswered) == 1  # two misses; no second ping piled up
        reactor.advance(1)
        assert first.signals == ['KILL']  # SIGKILL: a stopped process cannot act on TERM
        assert fleet.supervisor.status('demo').last_error == \
            'did not answer 3 health checks in a row (1s apart); replaced'
        # the ping the old process never answered fails now: nothing is held against the new one
        children.hung.clear()
        reactor.advance(Supervisor.minRestartDelay)
        reactor.ready('demo')
        children.unanswered[0].errback(ConnectionRefusedError())
        reactor.advance(10)
        assert reactor.child('demo').signals == [] and monitor.misses == {}
    finally:
        monitor.stopService()


def test_a_child_whose_workers_are_all_busy_is_never_replaced_while_its_reactor_answers(
        make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'NR_WORKERS': 2}})
    monitor = start_health(fleet, reactor)
    try:
        reactor.ready('demo')
        running = [send(fleet), send(fleet)]  # two long _predict calls, unanswered for 5 minutes
        for _ in range(300):  # a beat of the health loop each
            reactor.advance(1)
        assert reactor.child('demo').signals == [] and not any(d.called for d in running)
        assert monitor.misses == {}
    finally:
        monitor.stopService()


def test_health_loop_never_pings_a_child_that_is_still_loading(make_fleet, reactor, children):
    fleet = make_fleet({'slow': {'LOAD_TIMEOUT': 600}})
    children.down.add(b'http://127.0.0.1:5003')
    monitor = start_health(fleet, reactor)
    try:
        reactor.advance(300)  # a 5-minute import: 60 rounds, no miss counted
        assert reactor.child('slow').signals == [] and len(reactor.spawned) == 1
        reactor.advance(300)  # its LOAD_TIMEOUT, then
        assert reactor.spawned[0].signals == ['KILL']
        assert fleet.supervisor.status('slow').last_error == 'did not become ready within LOAD_TIMEOUT (600s)'
    finally:
        monitor.stopService()


def test_child_over_max_rss_is_recycled_one_replica_at_a_time(make_fleet, reactor, children):
    reactor.obey_signals = False  # they drain on TERM: the test says when each has exited
    fleet = make_fleet({'demo': {'REPLICAS': 2, 'MAX_RSS_MB': 100, 'HEALTH_INTERVAL': 1}})
    reactor.ready('demo#0', 'demo#1')
    rss = {reactor.child('demo#0').pid: 300 * 2 ** 20, reactor.child('demo#1').pid: 300 * 2 ** 20}
    monitor = start_health(fleet, reactor, rss_of=lambda pid: rss.get(pid, 10 * 2 ** 20))
    try:
        reactor.advance(1)  # the second sample over the limit
        # as a reload: a new process on the slot's spare port, beside the old one
        assert [p.proto.name for p in reactor.spawned] == ['demo#0', 'demo#1', 'demo#0+'], 'both at once'
        send(fleet)
        assert children.ports == [5003]  # the old one serves until the new one is ready
        children.calls[0].answer()
        reactor.advance(3)
        assert len(reactor.spawned) == 3  # demo#1 waits for demo#0's replacement
        reactor.ready('demo#0+')
        assert reactor.child('demo#0').signals[0] == 'TERM'  # drains: its answers are written
        reactor.child('demo#0').exit(ProcessDone(0))
        reactor.advance(2)
        assert [p.proto.name for p in reactor.spawned][-1] == 'demo#1+'
        reactor.ready('demo#1+')
        assert reactor.child('demo#1').signals[0] == 'TERM'
        reactor.child('demo#1').exit(ProcessDone(0))
        described_demo = described(fleet)
        assert described_demo['RECYCLES'] == 2 and described_demo['RESTARTS'] == 0
        assert [r['PORT'] for r in described_demo['REPLICAS']] == [5005, 5006]
    finally:
        monitor.stopService()


def test_lone_busy_child_over_max_rss_is_replaced_without_waiting(make_fleet, reactor, children):
    reactor.obey_signals = False
    fleet = make_fleet({'demo': {'MAX_RSS_MB': 100, 'HEALTH_INTERVAL': 1}})
    reactor.ready('demo')
    old_pid = reactor.child('demo').pid
    monitor = start_health(fleet, reactor, rss_of=lambda pid: 200 * 2 ** 20 if pid == old_pid else 1)
    try:
        busy = send(fleet)
        reactor.advance(1)
        assert reactor.child('demo+').pid is not None  # started while a request runs
        reactor.ready('demo+')
        after = send(fleet)
        assert children.ports == [5003, 5004]
        assert reactor.child('demo').signals == []  # still owes an answer
        children.calls[0].answer()
        assert result_of(busy).status == 200
        assert reactor.child('demo').signals[0] == 'TERM'
        children.calls[1].answer()
        assert result_of(after).status == 200
    finally:
        monitor.stopService()


def test_list_servers_holds_the_started_servers_and_lists_disabled_and_killed_apart(make_fleet, reactor):
    fleet = make_fleet({'demo': {}, 'twin': {'SERVER_CLASS': 'demo', 'DISABLED': True}, 'gone': {},
                        'remote': {'URLS': ['http://127.0.0.2:7000/run']}})
    reactor.ready('demo', 'gone')
    result_of(fleet.stop(fleet.servers['gone']))  # what /kill_server does
    stub = StubTreq(Gateway(fleet, reactor=reactor).resource())

    body = result_of(treq.json_content(result_of(stub.get('http://gateway/list_servers'))))

    assert list(body['AVAIL_SERVERS']) == ['demo', 'remote']
    assert list(body['STOPPED_SERVERS']) == ['twin', 'gone']
    assert body['STOPPED_SERVERS']['gone']['STATE'] == 'stopped'
    assert set(body['STOPPED_SERVERS']['twin']) == set(body['AVAIL_SERVERS']['demo'])
    assert GATEWAY_FIELDS <= set(body)
    fleet.start(fleet.servers['gone'])
    body = result_of(treq.json_content(result_of(stub.get('http://gateway/list_servers'))))
    assert list(body['AVAIL_SERVERS']) == ['demo', 'gone', 'remote']


def test_the_child_gets_its_entry_as_written_and_the_body_limit_as_a_flag(make_fleet, reactor):
    make_fleet({'demo': {'NR_WORKERS': 2, 'WEIGHT': 3}, 'big': {'SERVER_CLASS': 'demo', 'MAX_BODY_MB': 40}})
    argv = {name: list(reactor.child(name).args) for name in ('demo', 'big')}

    def flag(args, name):
        return args[args.index(name) + 1]

    def entry(name):  # in the environment, not on the command line (it may hold secrets)
        assert '--config-json' not in argv[name]
        return json.loads(reactor.child(name).env['BIS_SERVER_CONFIG'])

    # the worker's config_data is what the user wrote: no gateway plumbing added to it
    assert entry('demo') == {'NR_WORKERS': 2, 'WEIGHT': 3}
    assert float(flag(argv['demo'], '--max-body-mb')) == 8 * 6  # the gateway's default limit, re-encoding room
    assert entry('big') == {'SERVER_CLASS': 'demo', 'MAX_BODY_MB': 40}
    assert float(flag(argv['big'], '--max-body-mb')) == 40


def test_get_run_query_values_are_read_as_json_and_repeated_keys_as_a_list(make_fleet, reactor, gateway_of,
                                                                          children):
    fleet = make_fleet({'demo': {}})
    reactor.ready('demo')
    stub = gateway_of(fleet)
    query = ('SIGNATURE=demo&FEATURES=[5.1,3.5,1.4,0.2]&INPUT_VALUE=7&NAME=iris&EMPTY=&QUOTED=%227%22'
             '&TAG=a&TAG=2&FLAG=true&CODE=007&IMG=1234&BASE64_KEYS=IMG')
    response = result_of(stub.get('http://gateway/run?' + query))
    assert response.code == 200
    assert json.loads(children.calls[0].payload) == {
        'SIGNATURE': 'demo', 'FEATURES': [5.1, 3.5, 1.4, 0.2], 'INPUT_VALUE': 7, 'NAME': 'iris', 'EMPTY': '',
        'QUOTED': '7', 'TAG': ['a', 2], 'FLAG': True, 'CODE': '007',
        'IMG': '1234', 'BASE64_KEYS': 'IMG'}  # a base64 input stays text even when it looks like a number


def test_uptime_is_h_mm_ss_past_a_day_as_the_openapi_document_says():
    from bis_twisted.gateway.status import hms
    assert [hms(5), hms(3600), hms(90005), hms(-3)] == ['0:00:05', '1:00:00', '25:00:05', '0:00:00']
