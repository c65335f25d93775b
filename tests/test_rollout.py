"""Rollouts without processes: the windows and the rollback rule on ``task.Clock``, the choice
of version per request, rollback, shadow copies and the refusals of ``/rollout`` bodies, with
fake fleets in place of the gateway's."""

import random

import attr
import pytest
from twisted.internet import defer, task

from bis_twisted.errors import BadRequest, Conflict, GatewayTimeout
from bis_twisted.gateway.candidates import Candidates
from bis_twisted.gateway.config import EndpointConfig
from bis_twisted.gateway.rollout import CANDIDATE, STABLE, Rollout, Rollouts, version_of
from bis_twisted.gateway.rollout_plan import Plan, read_plan
from bis_twisted.gateway.rollout_metrics import RolloutCollector
from bis_twisted.gateway.rollout_stats import AgreementWindow, AnswerWindow, RollbackRule, same_result
from bis_twisted.shared.web import Answer


# -- windows and the rule ----------------------------------------------------------------------------
def test_a_window_forgets_answers_older_than_its_seconds_but_counts_them_since_the_start():
    clock = task.Clock()
    window = AnswerWindow(clock, seconds=10)
    for _ in range(4):
        window.observe(True, 0.5)
    clock.advance(6)
    for latency in (0.1, 0.2, 0.3, 0.4):
        window.observe(False, latency)
    assert window.count() == 8 and window.error_rate() == 0.5
    clock.advance(5)  # the first four are 11 s old now
    assert window.count() == 4 and window.error_rate() == 0.0
    assert window.quantiles(0.5, 0.99) == [0.3, 0.4]
    assert (window.requests, window.errors) == (8, 4)
    assert window.summary()['P99_MS'] == 400.0


def test_a_full_window_drops_its_oldest_answer_and_its_error_with_it():
    window = AnswerWindow(task.Clock(), max_kept=3)
    for error in (True, False, False, False):
        window.observe(error, 0.01)
    assert window.count() == 3 and window.error_rate() == 0.0


def test_agreement_is_the_share_of_matching_answers_in_the_window():
    clock = task.Clock()
    agreement = AgreementWindow(clock, seconds=10)
    assert agreement.rate() is None
    for agreed in (True, True, True, False):
        agreement.observe(agreed)
    assert agreement.rate() == 0.75
    clock.advance(11)
    agreement.observe(False)
    assert agreement.rate() == 0.0 and agreement.compared == 5


@pytest.mark.parametrize('stable, candidate, tolerance, same', [
    ({'a': [1, 2.0]}, {'a': [1.0, 2]}, None, True),
    ({'a': 0.5}, {'a': 0.51}, None, False),
    ({'a': 0.5}, {'a': 0.51}, 0.02, True),
    ([0.5, 1], [0.5], 0.1, False),
    ({'a': 1}, {'a': 1, 'b': 2}, None, False),
    (True, 1, 0.5, False),
    ('cat', 'cat', 0.1, True),
    (None, 0, None, False),
])
def test_results_agree_when_equal_as_json_or_within_the_tolerance(stable, candidate, tolerance, same):
    assert same_result(stable, candidate, tolerance) is same


def test_the_rule_waits_for_min_requests_then_names_the_error_rate():
    clock = task.Clock()
    rule = RollbackRule(error_rate=0.05, p99_ratio=2.0, min_requests=10)
    candidate = AnswerWindow(clock)
    for i in range(9):
        candidate.observe(i % 2 == 0, 0.01)
    assert rule.error_verdict(candidate) is None
    candidate.observe(False, 0.01)
    assert rule.error_verdict(candidate).startswith('ERROR_RATE 0.500 over 10 candidate answers')


def test_the_rule_compares_p99s_once_both_versions_have_100_answers_and_min_requests():
    clock = task.Clock()
    rule = RollbackRule(min_requests=5)
    stable, candidate = AnswerWindow(clock), AnswerWindow(clock)
    for _ in range(100):
        candidate.observe(False, 0.3)
    for _ in range(99):
        stable.observe(False, 0.1)
    assert rule.latency_verdict(stable, candidate) is None  # a p99 of 99 answers is their slowest
    stable.observe(False, 0.1)
    assert rule.latency_verdict(stable, candidate).startswith('P99_RATIO 3.00 (candidate p99 300.0 ms, stable 100.0 ms')
    assert RollbackRule(p99_ratio=4.0, min_requests=5).latency_verdict(stable, candidate) is None
    assert RollbackRule(min_requests=150).latency_verdict(stable, candidate) is None


@pytest.mark.parametrize('value, message', [
    ({'ERROR_RATE': 1.5}, 'ERROR_RATE must be a number from 0 to 1'),
    ({'P99_RATIO': 0}, 'P99_RATIO must be a number > 0'),
    ({'MIN_REQUESTS': 0.5}, 'MIN_REQUESTS must be an integer >= 1'),
    ({'ERRORS': 0.1}, "unknown key 'ERRORS'"),
    ('yes', 'ROLLBACK_ON must be an object'),
])
def test_a_bad_rollback_rule_is_refused_naming_the_key(value, message):
    with pytest.raises(BadRequest, match=message):
        RollbackRule.from_body(value)


def test_rollback_on_defaults_and_can_be_switched_off():
    assert RollbackRule.from_body(None) == RollbackRule(0.05, 2.0, 50)
    assert RollbackRule.from_body({'MIN_REQUESTS': 20}) == RollbackRule(0.05, 2.0, 20)
    assert RollbackRule.from_body(False) is None


@pytest.mark.parametrize('body, message', [
    ({'PERCENT': 101}, 'PERCENT must be a number from 0 to 100'),
    ({'PERCENT': '10'}, 'PERCENT must be a number from 0 to 100'),
    ({'SHADOW': 'yes'}, 'SHADOW must be true or false'),
    ({'TOLERANCE': -1}, 'TOLERANCE must be a number >= 0'),
    ({'CONFIG': {'PORT': 9000}}, "CONFIG cannot set 'PORT'"),
    ({'CONFIG': []}, 'CONFIG must be an object'),
    ({'SERVER_CLASS': ''}, 'SERVER_CLASS must name an endpoint file'),
    ({'PERCENTAGE': 5}, "unknown key 'PERCENTAGE'"),
])
def test_a_bad_rollout_body_is_refused_naming_the_key(body, message):
    with pytest.raises(BadRequest, match=message):
        read_plan(dict(body, SIGNATURE='iris'))


def test_a_canary_defaults_to_10_percent_and_a_shadow_to_every_request():
    assert read_plan({'SIGNATURE': 'iris'}).percent == 10.0
    assert read_plan({'SIGNATURE': 'iris', 'SHADOW': True}).percent == 100.0


# -- the request path, with fake fleets ----------------------------------------------------------------
class FakeFleet:
    """``run`` answers at once (or as ``answer`` says) and records what it was sent."""

    def __init__(self, answer=None):
        self.sent = []
        self.answer = answer or (lambda payload: Answer(200, {'predict_result': payload.decode()}))
        self.servers = {}

    async def run(self, name, payload, request_id=None, answer_fields=None):
        self.sent.append((name, payload, answer_fields))
        result = self.answer(payload)
        if isinstance(result, Exception):
            raise result
        if isinstance(result, defer.Deferred):
            return await result
        return result


class FakeRequest:
    def __init__(self, pin=None):
        self._pin = pin

    def getHeader(self, name):
        return self._pin if name == b'x-bis-version' else None


def make_rollouts(plan, stable=None, candidate=None, workers=1, seed=1):
    clock = task.Clock()
    stable, candidate = stable or FakeFleet(), candidate or FakeFleet()
    rollouts = Rollouts(stable, reactor=clock, candidates=Candidates(stable, clock, fleet=candidate),
                        rng=random.Random(seed))
    config = EndpointConfig(name='iris@candidate', server_class='iris_v2', entry={}, nr_workers=workers)
    rollout = Rollout(plan, config, clock, '2026-01-01 00:00:00')
    rollout.to('shadow' if plan.shadow else 'canary', 'now')
    rollouts.live['iris'] = rollouts.last['iris'] = rollout
    rollouts.candidates._members['iris'] = config
    return clock, rollouts, rollout, stable, candidate


def plan(**kwargs):
    values = dict(endpoint='iris', server_class='iris_v2', percent=20.0, shadow=False, tolerance=None, overrides={},
                  rule=RollbackRule())
    values.update(kwargs)
    return Plan(**values)


def answer_of(rollouts, pin=None, payload=b'1', fields=b'{"ver-lib":"x"}'):
    request = FakeRequest(pin)
    d = defer.ensureDeferred(rollouts.run(request, 'iris', payload, 'rid', fields))
    return request, d


def test_an_endpoint_without_a_rollout_goes_straight_to_the_fleet_unmarked():
    stable = FakeFleet()
    rollouts = Rollouts(stable, reactor=task.Clock())
    request = FakeRequest()
    answer = defer.ensureDeferred(rollouts.run(request, 'iris', b'7', 'rid', b'{}')).result
    assert answer.body == {'predict_result': '7'} and version_of(request) is None
    assert stable.sent == [('iris', b'7', b'{}')]


def test_a_candidate_pin_without_a_rollout_is_a_conflict():
    rollouts = Rollouts(FakeFleet(), reactor=task.Clock())
    with pytest.raises(Conflict, match='has no candidate serving'):
        rollouts.run(FakeRequest(b'candidate'), 'iris', b'7', 'rid', None)


def test_a_canary_gets_its_percent_of_requests_and_every_answer_says_its_version():
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=20.0))
    versions = []
    for _ in range(1000):
        request, d = answer_of(rollouts)
        assert d.result.body['version'] == version_of(request)
        versions.append(version_of(request))
    assert 150 <= versions.count(CANDIDATE) <= 250
    assert len(candidate.sent) == versions.count(CANDIDATE) and len(stable.sent) == versions.count(STABLE)
    # the model server is asked to write the version in with the gateway's fields
    assert candidate.sent[0][2] == b'{"ver-lib":"x","version":"candidate"}'
    assert rollout.windows[CANDIDATE].requests == versions.count(CANDIDATE)


def test_a_pin_overrides_the_share_and_a_bad_pin_is_refused():
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=0.0))
    request, d = answer_of(rollouts, pin=b'Candidate ')
    assert version_of(request) == CANDIDATE and len(candidate.sent) == 1
    request, d = answer_of(rollouts, pin=b'canary')
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(BadRequest) and 'X-Bis-Version must be "stable" or "candidate"' in failure.getErrorMessage()


def test_a_candidate_over_the_error_rate_is_rolled_back_and_the_next_requests_go_to_stable():
    failing = FakeFleet(answer=lambda payload: Answer(500, {'ERROR': 'boom'}))
    clock, rollouts, rollout, stable, candidate = make_rollouts(
        plan(percent=50.0, rule=RollbackRule(min_requests=10)), candidate=failing)
    removed = []
    rollouts.candidates.remove = lambda name: removed.append(name) or defer.succeed(None)
    while rollout.state == 'canary':
        answer_of(rollouts)
    assert rollout.state == 'rolled_back' and removed == ['iris']
    assert rollout.windows[CANDIDATE].errors == 10
    assert rollout.reason.startswith('ERROR_RATE 1.000 over 10 candidate answers')
    assert rollout.history[-1]['STATE'] == 'rolled_back' and 'ERROR_RATE' in rollout.history[-1]['REASON']
    sent_before = len(failing.sent)
    for _ in range(50):
        request, d = answer_of(rollouts)
        assert d.result.status == 200 and version_of(request) is None
    assert len(failing.sent) == sent_before


def test_an_error_raised_for_the_candidate_counts_against_it():
    timeouts = FakeFleet(answer=lambda payload: GatewayTimeout('late'))
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=100.0), candidate=timeouts)
    request, d = answer_of(rollouts)
    d.addErrback(lambda f: f.trap(GatewayTimeout))
    assert rollout.windows[CANDIDATE].errors == 1 and version_of(request) == CANDIDATE


def test_a_shadow_copy_goes_after_the_stable_answer_and_is_compared():
    differs = FakeFleet(answer=lambda payload: Answer(200, {'predict_result': 'x' if payload == b'3' else
                                                            payload.decode()}))
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(shadow=True, percent=100.0), candidate=differs,
                                                                workers=4)
    for value in (b'1', b'2', b'3', b'4'):
        request, d = answer_of(rollouts, payload=value)
        assert d.result.body['predict_result'] == value.decode() and version_of(request) == STABLE
    assert differs.sent == []  # not before the reactor's next turn: the stable answer goes first
    clock.advance(0)
    assert [p for _, p, _ in differs.sent] == [b'1', b'2', b'3', b'4']
    assert differs.sent[0][2] is None  # the candidate's answer is read whole, for the comparison
    assert rollout.agreement.rate() == 0.75 and rollout.describe()['AGREEMENT'] == 0.75


def test_a_shadow_copy_is_dropped_while_the_candidate_is_busy_with_copies():
    pending = []

    def later(payload):
        pending.append(defer.Deferred())
        return pending[-1]

    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(shadow=True, percent=100.0),
                                                                candidate=FakeFleet(later), workers=2)
    for value in (b'1', b'2', b'3'):
        answer_of(rollouts, payload=value)
    clock.advance(0)
    assert len(pending) == 2 and rollout.shadow_dropped == 1
    for d in pending:
        d.callback(Answer(200, {'predict_result': '1'}))
    assert rollout.shadow_in_flight == 0 and rollout.agreement.compared == 2


def test_the_collector_labels_figures_by_version():
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=100.0))
    answer_of(rollouts)
    families = {f.name: f for f in RolloutCollector(rollouts).collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families['bis_rollout_requests'].samples}
    assert samples[('bis_rollout_requests_total', (('endpoint', 'iris'), ('version', 'candidate')))] == 1
    states = {s.labels['state']: s.value for s in families['bis_rollout_state'].samples}
    assert states['canary'] == 1.0 and states['rolled_back'] == 0.0


def test_a_restart_during_a_rollout_is_told_in_the_log_and_the_history(tmp_path):
    from twisted.logger import globalLogPublisher

    from bis_twisted.gateway.status import StateHistory
    clock = task.Clock()
    history = StateHistory(str(tmp_path / 'history.json'), clock=clock)
    history.startup()
    history.set_rollouts_under_way({'iris': 'iris_v2 20%'})
    history = StateHistory(str(tmp_path / 'history.json'), clock=clock)  # the next start
    history.startup()
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        Rollouts(FakeFleet(), reactor=clock, history=history).startService()
    finally:
        globalLogPublisher.removeObserver(said.append)
    lines = [e['log_format'].format(**e) for e in said if 'endpoint' in e]
    assert any('restarted during the rollout of iris (iris_v2 20%): serving the stable version' in line
               for line in lines), lines
    assert 'ROLLOUTS_UNDER_WAY' not in history.snapshot()
    assert 'ended by a gateway restart' in history.snapshot()['EVENTS'][-1]['EVENT']


def test_the_candidates_entry_is_the_stables_with_its_file_and_config(tmp_path):
    (tmp_path / 'iris.py').write_text('class IrisWorker:\n  pass\n')
    (tmp_path / 'iris_v2.py').write_text('class IrisV2Worker:\n  pass\n')
    stable_config = EndpointConfig(name='iris', server_class='iris', ports=(5003, 5004), spare_ports=(5005, 5006),
                                   replicas=2, entry={'REPLICAS': 2, 'NR_WORKERS': 3, 'WEIGHT': 1, 'PORT': 5003})

    class Fleet(FakeFleet):
        endpoints_dir = str(tmp_path)
        config = None

    fleet = Fleet()
    fleet.servers = {'iris': attr.make_class('S', ['config'])(stable_config)}
    rollouts = Rollouts(fleet, reactor=task.Clock(), gateway_port=5002)
    candidate = rollouts.candidates.endpoint(stable_config, plan(overrides={'WEIGHT': 2}))
    assert candidate.name == 'iris@candidate' and candidate.server_class == 'iris_v2'
    assert candidate.replicas == 1 and candidate.nr_workers == 3 and candidate.entry['WEIGHT'] == 2
    assert not set(candidate.ports + candidate.spare_ports) & {5002, 5003, 5004, 5005, 5006}
    assert candidate.disabled  # registered stopped: it starts on trial
    promoted = rollouts.candidates.promoted(stable_config, plan(overrides={'WEIGHT': 2, 'REPLICAS': 1}))
    assert promoted.ports == (5003, 5004) and promoted.replicas == 2 and promoted.server_class == 'iris_v2'
    assert promoted.entry['WEIGHT'] == 2


def test_no_copy_is_made_while_the_stable_has_a_request_per_worker_in_flight():
    target = attr.make_class('T', {'active': attr.ib(default=True), 'in_flight': attr.ib(default=0)})()
    server = attr.make_class('S', ['config', 'targets'])(EndpointConfig(name='iris', server_class='iris', entry={},
                                                                        nr_workers=2), [target])
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(shadow=True, percent=100.0), workers=4)
    stable.servers = {'iris': server}
    target.in_flight = 2  # two other requests of clients: both workers busy
    answer_of(rollouts)
    target.in_flight = 1
    answer_of(rollouts)
    clock.advance(0)
    assert rollout.shadow_dropped == 1 and len(candidate.sent) == 1


def test_a_config_reload_gives_a_new_endpoint_no_port_a_candidate_holds(tmp_path):
    from types import SimpleNamespace

    from bis_twisted.gateway.config import load_config
    from bis_twisted.gateway.config_reload import ConfigReloader

    folder = tmp_path / 'endpoints'
    folder.mkdir()
    for name in ('iris', 'late'):
        (folder / '{}.py'.format(name)).write_text('class {}Worker:\n  pass\n'.format(name.capitalize()))
    path = tmp_path / 'config_gateway.txt'
    path.write_text('{"CONFIG_ENDPOINTS": {"iris": {}}}')
    config = load_config(str(path), str(folder), 5002)
    assert (config.endpoint('iris').ports, config.endpoint('iris').spare_ports) == ((5003,), (5004,))

    class Applied:
        async def apply_config(self, config):
            self.config = config
            return {'FAILED': {}}

    fleet = Applied()
    held = {'iris@candidate': ((5005,), (5006,))}  # what a rollout's candidate runs on
    reloader = ConfigReloader(str(path), str(folder), 5002, config, fleet, SimpleNamespace(refresh=lambda: None),
                              SimpleNamespace(enabled=True), task.Clock(), held=lambda: held)
    path.write_text('{"CONFIG_ENDPOINTS": {"iris": {}, "late": {}}}')
    defer.ensureDeferred(reloader.reload())
    late = fleet.config.endpoint('late')
    assert not set(late.ports + late.spare_ports) & {5003, 5004, 5005, 5006}, (late.ports, late.spare_ports)


def test_a_failed_promotion_puts_the_stable_config_back_and_the_canary_keeps_its_share():
    from bis_twisted.errors import ReloadFailed

    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=20.0))
    server = attr.make_class('S', ['config', 'name'])('OLD', 'iris')
    seen = []

    async def reload(target):
        seen.append(target.config)
        raise ReloadFailed("server 'iris': the new process did not start, the old one keeps serving: exit code 3")

    stable.spawned_server = stable.server = lambda name: server
    stable.reload = reload
    rollouts.candidates.promoted = lambda config, plan: 'NEW'
    d = defer.ensureDeferred(rollouts.command({'SIGNATURE': 'iris', 'PROMOTE': True}))
    failure = d.result
    d.addErrback(lambda _: None)
    assert failure.check(ReloadFailed) and 'promotion failed, the candidate keeps its share' in failure.getErrorMessage()
    assert seen == ['NEW'] and server.config == 'OLD'
    assert rollout.state == 'canary' and rollouts.live['iris'] is rollout
    assert [h['STATE'] for h in rollout.history][-2:] == ['promoting', 'canary']


def test_a_config_reload_that_removes_the_endpoint_aborts_its_rollout():
    clock, rollouts, rollout, stable, candidate = make_rollouts(plan(percent=20.0))
    removed = []
    rollouts.candidates.remove = lambda name: removed.append(name) or defer.succeed(None)
    defer.ensureDeferred(rollouts.after_config_reload())
    assert rollout.state == 'aborted' and rollout.reason == 'the config reload removed the endpoint'
    assert removed == ['iris'] and 'iris' not in rollouts.live
    request, d = answer_of(rollouts)
    assert version_of(request) is None and len(candidate.sent) == 0
