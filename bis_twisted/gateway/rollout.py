"""Canary and shadow rollouts: a new version of an endpoint (the candidate) serves beside the
serving one (the stable) and is judged on real requests before it takes over.

``POST /rollout`` starts the candidate as a server of its own, ``<endpoint>@candidate``, in a
fleet of candidates beside the gateway's fleet (same supervisor, same client to the children,
ports of its own), with its own ``REPLICAS`` (default 1) and the stable's config entry with
``SERVER_CLASS`` and ``CONFIG`` applied. It is started on trial: when it does not load, the
load error is the answer (500) and the stable never stopped serving. Once it is ready:

- a canary gets ``PERCENT`` of the endpoint's requests (chosen per request at random; the
  header ``X-Bis-Version: candidate|stable`` pins one); each answer says ``"version"``;
- a shadow gets a copy of ``PERCENT`` of them once the stable has answered (the client has
  the stable answer; the copy never holds it up, and is dropped when the candidate's workers
  are all busy with copies); its ``predict_result`` is compared with the stable's.

Each version's answers are kept over a sliding window (``rollout_stats``); when the candidate
is worse than ``ROLLBACK_ON`` says, it is rolled back: all requests go to the stable at once,
the candidate answers what it has and stops, one log line and an entry in the gateway's state
history name the figure. ``PROMOTE`` reloads the stable with the candidate's code and config
the way ``/reload_server`` does (new processes beside the old ones, nothing dropped), then
stops the candidate; ``ABORT`` stops it. Rollouts live in memory: a gateway restarted during
one comes back on the stable version and says so in its log.
"""

import random

import orjson
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..errors import BadRequest, BisError, Conflict, ReloadFailed
from ..shared.web import Answer, now_text
from .candidates import Candidates
from .metrics import RecentStats
from .proxy import ChildStream
from .rollout_plan import read_plan
from .rollout_stats import AgreementWindow, AnswerWindow, same_result
from .supervisor import TrialFailed

VERSION_HEADER = b'x-bis-version'
STABLE, CANDIDATE = 'stable', 'candidate'
P99_CHECK_SECONDS = 1.0  # the latency rule sorts the window: not on every answer

LIVE_STATES = ('starting', 'canary', 'shadow', 'promoting')


class Rollout:
    """One rollout of one endpoint: its plan, its state and each version's figures."""

    def __init__(self, plan, candidate, clock, started_at_text):
        self.plan = plan
        self.candidate = candidate  # the candidate's EndpointConfig
        self.state = 'starting'
        self.reason = None  # why it ended, one line
        self._clock = clock
        self.windows = {STABLE: AnswerWindow(clock), CANDIDATE: AnswerWindow(clock)}
        self.recent = {STABLE: RecentStats(clock), CANDIDATE: RecentStats(clock)}  # the status page's lines
        self.agreement = AgreementWindow(clock)
        self.shadow_in_flight = 0
        self.shadow_dropped = 0
        # a copy goes only to a free worker of the candidate: it never waits in its queue
        self.shadow_cap = max(1, candidate.nr_workers * candidate.replicas)
        self.started = started_at_text
        self.history = [{'time': started_at_text, 'STATE': 'starting'}]
        self._latency_checked_at = None

    @property
    def endpoint(self):
        return self.plan.endpoint

    @property
    def live(self):
        return self.state in LIVE_STATES

    @property
    def serving(self):
        """The candidate takes requests (and copies) now."""
        return self.state in ('canary', 'shadow', 'promoting')

    def to(self, state, time_text, reason=None):
        self.state = state
        if reason is not None:
            self.reason = reason
        entry = {'time': time_text, 'STATE': state}
        if reason is not None:
            entry['REASON'] = reason
        self.history.append(entry)

    def verdict(self):
        """Why the candidate should be rolled back now (one line naming the figure), or None."""
        rule = self.plan.rule
        if rule is None or self.state not in ('canary', 'shadow'):
            return None
        reason = rule.error_verdict(self.windows[CANDIDATE])
        if reason is not None:
            return reason
        now = self._clock.seconds()
        if self._latency_checked_at is not None and now - self._latency_checked_at < P99_CHECK_SECONDS:
            return None
        self._latency_checked_at = now
        return rule.latency_verdict(self.windows[STABLE], self.windows[CANDIDATE])

    def describe(self):
        """The endpoint's ``ROLLOUT`` entry in ``/list_servers``."""
        shown = {'STATE': self.state, 'CANDIDATE': self.candidate.name,
                 'SERVER_CLASS': self.candidate.server_class, 'PERCENT': self.plan.percent,
                 'SHADOW': self.plan.shadow, 'STARTED': self.started,
                 'ROLLBACK_ON': self.plan.rule.shown() if self.plan.rule is not None else False,
                 'VERSIONS': {version: window.summary() for version, window in self.windows.items()},
                 'HISTORY': list(self.history)}
        if self.reason is not None:
            shown['REASON'] = self.reason
        if self.plan.shadow:
            rate = self.agreement.rate()
            shown.update({'AGREEMENT': None if rate is None else round(rate, 4),
                          'COMPARED': self.agreement.compared, 'SHADOW_DROPPED': self.shadow_dropped,
                          'TOLERANCE': self.plan.tolerance})
        return shown


class Rollouts(Service):
    """The rollouts of a gateway's ``fleet``: ``run`` is on every inference request's way
    (for an endpoint without a rollout it is the fleet's own ``run``), ``command`` does what a
    ``/rollout`` body asks. ``candidates`` (a ``Candidates``) runs the candidates, beside
    ``fleet``, on ports counted from ``gateway_port``; ``history`` (a ``StateHistory``) gets
    an entry when a rollout ends and tells, at start, of rollouts a restart ended."""

    name = 'rollouts'
    _log = Logger()

    def __init__(self, fleet, reactor=None, history=None, gateway_port=None, candidates=None, rng=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.fleet = fleet
        self.history = history
        self.candidates = candidates or Candidates(fleet, self._reactor, gateway_port)
        self._random = (rng or random.Random()).random
        self._now_text = now_text
        self.live = {}  # endpoint -> its Rollout under way
        self.last = {}  # endpoint -> its latest Rollout, under way or ended
        self._fields = {}  # (the gateway's fields, version) -> them with "version"

    # -- the service -------------------------------------------------------------------------
    def startService(self):
        Service.startService(self)
        if self.history is None:
            return
        ended = self.history.take_rollouts_under_way()
        for endpoint, text in sorted(ended.items()):
            self._log.warn('the gateway restarted during the rollout of {endpoint} ({text}): serving the stable '
                           'version only; POST /rollout to start it again', endpoint=endpoint, text=text)
            self.history.note('rollout of {} ({}) ended by a gateway restart: serving the stable version'.format(
                endpoint, text))

    def _remember_under_way(self):
        if self.history is not None:
            self.history.set_rollouts_under_way({e: _summary(r) for e, r in self.live.items()})

    # -- the request path ------------------------------------------------------------------------
    def run(self, request, name, payload, request_id, answer_fields):
        """The answer to an inference request for endpoint ``name`` (awaitable): the fleet's
        own ``run`` when no rollout of it is under way."""
        rollout = self.live.get(name)
        if rollout is None or not rollout.serving:
            pin = request.getHeader(VERSION_HEADER) if request is not None else None
            if pin is not None and pin.strip().lower() == CANDIDATE.encode():
                raise Conflict('X-Bis-Version: candidate, but endpoint {!r} has no candidate serving{}; send '
                               'the request without it'.format(name, self._why_none(name)))
            return self.fleet.run(name, payload, request_id, answer_fields)
        return self._run_under_rollout(rollout, request, name, payload, request_id, answer_fields)

    def _why_none(self, name):
        rollout = self.last.get(name)
        return ' (its rollout is {})'.format(rollout.state) if rollout is not None else ''

    def choose(self, rollout, pin):
        """``stable`` or ``candidate`` for one request: the pin when there is one, else
        ``PERCENT`` of a canary's requests at random; a shadow's answers are the stable's."""
        if pin is not None:
            pin = pin.strip().lower()
            if pin in (b'stable', b'candidate'):
                return pin.decode()
            raise BadRequest('X-Bis-Version must be "stable" or "candidate", got {!r}'.format(
                pin.decode('latin-1')[:40]))
        if rollout.plan.shadow:
            return STABLE
        return CANDIDATE if self._random() * 100 < rollout.plan.percent else STABLE

    async def _run_under_rollout(self, rollout, request, name, payload, request_id, answer_fields):
        version = self.choose(rollout, request.getHeader(VERSION_HEADER) if request is not None else None)
        if request is not None:
            mark_version(request, version)
        fleet, server = (self.candidates, rollout.candidate.name) if version == CANDIDATE else (self.fleet, name)
        started = self._reactor.seconds()
        try:
            result = await fleet.run(server, payload, request_id, self._with_version(answer_fields, version))
        except BisError as exc:
            self._observe(rollout, version, exc.status >= 500, started)
            raise
        self._observe(rollout, version, result.status >= 500, started)
        if not isinstance(result, ChildStream) and result.raw is None:
            result = Answer(result.status, dict(result.body, version=version), result.batch_size)
        if rollout.plan.shadow and version == STABLE and rollout.serving and \
                self._random() * 100 < rollout.plan.percent:
            if self._stable_busy(name):
                rollout.shadow_dropped += 1  # under load: the stable's requests come first
            else:
                self._send_copy(rollout, payload, request_id, result)
        return result

    def _stable_busy(self, name):
        """Whether the stable has as many requests in flight as it has workers: a copy's
        work would then slow the stable's own answers (on the same cores), so it is dropped."""
        server = self.fleet.servers.get(name)
        if server is None:
            return False
        targets = [t for t in server.targets if t.active]
        return sum(t.in_flight for t in targets) >= server.config.nr_workers * len(targets)

    def _with_version(self, fields, version):
        """The gateway's encoded fields for the model server to write in, with ``version``."""
        if fields is None:
            return None
        key = (fields, version)
        marked = self._fields.get(key)
        if marked is None:
            if len(self._fields) > 8:  # the gateway's fields change once a second
                self._fields.clear()
            marked = self._fields[key] = fields[:-1] + b',"version":"' + version.encode() + b'"}'
        return marked

    def _observe(self, rollout, version, error, started):
        latency = self._reactor.seconds() - started
        rollout.windows[version].observe(error, latency)
        rollout.recent[version].observe(500 if error else 200, latency)
        if version == CANDIDATE:
            self._judge(rollout)

    def _judge(self, rollout):
        reason = rollout.verdict()
        if reason is not None:
            d = defer.Deferred.fromCoroutine(self._end(rollout, 'rolled_back', reason))
            d.addErrback(lambda f: self._log.failure('rolling back {endpoint}', f, endpoint=rollout.endpoint))

    # -- shadows -----------------------------------------------------------------------------
    def _send_copy(self, rollout, payload, request_id, stable_result):
        if rollout.shadow_in_flight >= rollout.shadow_cap:
            rollout.shadow_dropped += 1  # the candidate is busy: a copy never waits in its queue
            return
        rollout.shadow_in_flight += 1
        # after this turn of the reactor, in which the stable answer is written
        d = task.deferLater(self._reactor, 0, lambda: defer.Deferred.fromCoroutine(
            self._copy(rollout, payload, request_id, stable_result)))
        d.addErrback(lambda f: self._log.failure('shadow copy to {name}', f, name=rollout.candidate.name))

    async def _copy(self, rollout, payload, request_id, stable_result):
        started = self._reactor.seconds()
        try:
            if not rollout.serving:
                return
            try:
                result = await self.candidates.run(rollout.candidate.name, payload, request_id, None)
            except BisError as exc:
                self._observe(rollout, CANDIDATE, exc.status >= 500, started)
                if _ok(stable_result):
                    rollout.agreement.observe(False)
                return
            if isinstance(result, ChildStream):  # read to its end; a stream is not compared
                await result.relay(lambda line: None)
                self._observe(rollout, CANDIDATE, result.status >= 500, started)
                return
            self._observe(rollout, CANDIDATE, result.status >= 500, started)
            if _ok(stable_result) and rollout.serving:
                rollout.agreement.observe(result.status == 200 and same_result(
                    _predict_result(stable_result), result.body.get('predict_result'), rollout.plan.tolerance))
        finally:
            rollout.shadow_in_flight -= 1

    # -- /rollout ----------------------------------------------------------------------------
    async def command(self, inputs):
        """Do what a ``/rollout`` body asks; the answer's fields."""
        name = inputs['SIGNATURE']
        promote, abort = inputs.get('PROMOTE', False), inputs.get('ABORT', False)
        for key, value in (('PROMOTE', promote), ('ABORT', abort)):
            if not isinstance(value, bool):
                raise BadRequest('{} must be true or false, got {!r}'.format(key, value))
        if promote and abort:
            raise BadRequest('send either PROMOTE or ABORT, not both')
        if promote or abort:
            extra = [k for k in inputs if k not in ('SIGNATURE', 'PROMOTE', 'ABORT')]
            if extra:
                raise BadRequest('{} takes only SIGNATURE; {!r} belongs to a body that starts a rollout'.format(
                    'PROMOTE' if promote else 'ABORT', extra[0]))
            rollout = await (self.promote(name) if promote else self.abort(name))
        else:
            rollout = await self.start(read_plan(inputs))
        return {'MESSAGE': _message(rollout), 'SIGNATURE': name, 'ROLLOUT': rollout.describe()}

    async def start(self, plan):
        """Start the candidate of ``plan`` and send it requests once it is ready."""
        name = plan.endpoint
        server = self.fleet.spawned_server(name)  # 404 for an unknown endpoint, 400 for URLS
        running = self.live.get(name)
        if running is not None:
            raise Conflict('a rollout of {!r} is under way ({}, STATE {}, since {}); POST /rollout with '
                           '{{"SIGNATURE": "{}", "PROMOTE": true}} or {{..., "ABORT": true}} first'.format(
                               name, running.candidate.server_class, running.state, running.started, name))
        if self.fleet.busy(name):
            raise Conflict('server {!r} is being reloaded; start the rollout once that is over'.format(name))
        candidate = self.candidates.endpoint(server.config, plan)
        rollout = Rollout(plan, candidate, self._reactor, self._now_text())
        self.live[name] = self.last[name] = rollout
        self._log.info('rollout of {endpoint}: starting candidate {candidate} ({server_class}, {replicas} '
                       'replica(s))', endpoint=name, candidate=candidate.name, server_class=candidate.server_class,
                       replicas=candidate.replicas)
        try:
            await self.candidates.start(self.candidates.add(name, candidate))
        except (defer.FirstError, TrialFailed) as exc:
            failure = exc.subFailure.value if isinstance(exc, defer.FirstError) else exc
            if rollout.state == 'aborted':
                raise Conflict('rollout of {!r} was aborted while its candidate loaded'.format(name)) from None
            reason = 'the candidate did not start: {}'.format(failure)
            if rollout.live:
                await self._end(rollout, 'aborted', reason)
            raise ReloadFailed('rollout of {!r}: {}; the stable version keeps serving'.format(name, reason)) from None
        if rollout.state != 'starting':  # aborted while it loaded
            raise Conflict('rollout of {!r} was {} while its candidate loaded'.format(name, rollout.state))
        rollout.to('shadow' if plan.shadow else 'canary', self._now_text())
        self._remember_under_way()
        self._log.info('rollout of {endpoint}: candidate {candidate} ready; {what}', endpoint=name,
                       candidate=candidate.name, what='{:g}% of the requests copied to it (shadow)'.format(plan.percent)
                       if plan.shadow else '{:g}% of the requests go to it (canary)'.format(plan.percent))
        return rollout

    async def promote(self, name):
        """Make the candidate the stable version: the endpoint's processes are reloaded with
        its code and config (new ones beside the old ones, which drain), then it stops."""
        rollout = self._under_way(name, 'promote')
        before = rollout.state
        server = self.fleet.spawned_server(name)
        old = server.config
        promoted = self.candidates.promoted(old, rollout.plan)
        rollout.to('promoting', self._now_text())
        server.config = promoted  # what the reload starts its new processes with
        try:
            replaced = await self.fleet.reload(server)
        except (ReloadFailed, Conflict) as exc:
            server.config = old
            rollout.to(before, self._now_text(), 'promotion failed: {}'.format(exc.message))
            raise ReloadFailed('rollout of {!r}: promotion failed, the candidate keeps its share: {}'.format(
                name, exc.message)) from None
        await self._end(rollout, 'promoted', '{} serves every request ({} replica(s) replaced)'.format(
            rollout.candidate.server_class, replaced))
        return rollout

    async def abort(self, name):
        """Stop the candidate; every request goes to the stable version."""
        rollout = self._under_way(name, 'abort')
        await self._end(rollout, 'aborted', 'aborted by an operator')
        return rollout

    def _under_way(self, name, what):
        self.fleet.server(name)  # 404 for an unknown endpoint
        rollout = self.live.get(name)
        if rollout is None:
            last = self.last.get(name)
            raise Conflict('no rollout of {!r} is under way to {}{}'.format(
                name, what, ' (the last one is {})'.format(last.state) if last is not None else ''))
        if what == 'promote' and rollout.state != 'canary' and rollout.state != 'shadow':
            raise Conflict('the rollout of {!r} is {}; it can be promoted once its candidate serves'.format(
                name, rollout.state))
        return rollout

    async def _end(self, rollout, state, reason):
        """End ``rollout``: no request goes to its candidate from now on; the candidate
        answers those it has, then stops."""
        name = rollout.endpoint
        if not rollout.live:
            return
        rollout.to(state, self._now_text(), reason)
        if self.live.get(name) is rollout:
            del self.live[name]
        self._remember_under_way()
        if state == 'rolled_back':
            self._log.warn('rollout of {endpoint}: candidate {candidate} rolled back: {reason}; the stable '
                           'version serves every request', endpoint=name, candidate=rollout.candidate.name,
                           reason=reason)
        else:
            self._log.info('rollout of {endpoint}: {state}: {reason}', endpoint=name, state=state, reason=reason)
        if self.history is not None:
            self.history.note('rollout of {} ({}) {}: {}'.format(name, rollout.candidate.server_class,
                                                                  state.replace('_', ' '), reason))
        await self.candidates.remove(name)

    def ports_held(self):
        """``{candidate name: (ports, spare ports)}``: for a config reload to keep off them."""
        return self.candidates.ports_held()

    async def after_config_reload(self):
        """A config reload removed or moved an endpoint under rollout: its rollout ends."""
        for name, rollout in list(self.live.items()):
            server = self.fleet.servers.get(name)
            if server is None or server.config.is_remote:
                await self._end(rollout, 'aborted', 'the config reload removed the endpoint')

    # -- views ---------------------------------------------------------------------------------
    def describe(self, name):
        """The ``ROLLOUT`` entry of endpoint ``name``, or None when it never had one."""
        rollout = self.last.get(name)
        return rollout.describe() if rollout is not None else None

    def points(self):
        """``/stats``' ``ROLLOUTS``: per endpoint, the state of its latest rollout and each
        version's requests/s and p50/p99 per window (the status page draws both on one chart)."""
        return {name: {'STATE': rollout.state, 'VERSIONS': {v: recent.points() for v, recent in rollout.recent.items()}}
                for name, rollout in self.last.items()}


def mark_version(request, version):
    """Note which version answers ``request``: the gateway's fields then carry it."""
    request.bis_version = version


def version_of(request):
    """The version that answered ``request`` (``mark_version``), or None."""
    return getattr(request, 'bis_version', None)


def _ok(result):
    return not isinstance(result, ChildStream) and result.status == 200


def _predict_result(answer):
    if answer.raw is not None:
        return orjson.loads(answer.raw).get('predict_result')
    return answer.body.get('predict_result')


def _summary(rollout):
    return '{} {}{:g}%'.format(rollout.candidate.server_class, 'shadow ' if rollout.plan.shadow else '',
                               rollout.plan.percent)


def _message(rollout):
    state = rollout.state
    if state == 'canary':
        return 'candidate {} ready: {:g}% of the requests go to it'.format(rollout.candidate.name, rollout.plan.percent)
    if state == 'shadow':
        return 'candidate {} ready: it gets a copy of {:g}% of the requests'.format(rollout.candidate.name,
                                                                                    rollout.plan.percent)
    return 'rollout {}: {}'.format(state.replace('_', ' '), rollout.reason)

