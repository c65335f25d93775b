"""The figures a rollout is judged by: per version a sliding window of answers (requests,
error rate, p50/p99), a shadow's agreement with the stable answers, and ``ROLLBACK_ON``, the
rule that says when a candidate is worse than the stable version. Pure: time comes from the
clock given, so ``task.Clock`` drives them in tests.
"""

import collections
import numbers

import attr

from ..errors import BadRequest

WINDOW_SECONDS = 60.0  # the sliding window every figure is taken over
WINDOW_MAX = 5000      # answers kept per window at most (the oldest go first)

DEFAULT_ERROR_RATE = 0.05
DEFAULT_P99_RATIO = 2.0
DEFAULT_MIN_REQUESTS = 50


class AnswerWindow:
    """The answers of one version over the last ``seconds``: each one's time, whether it was
    an error (a 5xx, a worker's error, a timeout, a crash) and how long it took; plus the
    counts since the rollout started."""

    def __init__(self, clock, seconds=WINDOW_SECONDS, max_kept=WINDOW_MAX):
        self._clock = clock
        self.seconds = seconds
        self._kept = collections.deque(maxlen=max_kept)  # (time, error, latency s)
        self._errors = 0  # errors among _kept
        self.requests = 0  # since the start
        self.errors = 0

    def observe(self, error, latency):
        now = self._clock.seconds()
        self._expire(now)
        if len(self._kept) == self._kept.maxlen and self._kept[0][1]:
            self._errors -= 1  # the append below pushes the oldest out
        self._kept.append((now, error, latency))
        self._errors += error
        self.requests += 1
        self.errors += error

    def _expire(self, now):
        oldest = now - self.seconds
        while self._kept and self._kept[0][0] < oldest:
            self._errors -= self._kept.popleft()[1]

    def count(self):
        self._expire(self._clock.seconds())
        return len(self._kept)

    def error_rate(self):
        n = self.count()
        return self._errors / n if n else None

    def quantiles(self, *qs):
        """Latencies in seconds at the quantiles ``qs`` (None each when the window is empty)."""
        self._expire(self._clock.seconds())
        latencies = sorted(latency for _, _, latency in self._kept)
        if not latencies:
            return [None for _ in qs]
        return [latencies[min(len(latencies) - 1, int(len(latencies) * q))] for q in qs]

    def summary(self):
        """What ``/list_servers`` shows of this version."""
        p50, p99 = self.quantiles(0.5, 0.99)
        rate = self.error_rate()
        return {'REQUESTS': self.requests, 'ERRORS': self.errors, 'WINDOW_REQUESTS': self.count(),
                'ERROR_RATE': None if rate is None else round(rate, 4),
                'P50_MS': None if p50 is None else round(p50 * 1000, 2),
                'P99_MS': None if p99 is None else round(p99 * 1000, 2)}


class AgreementWindow:
    """Whether a shadow's answers matched the stable ones, over the last ``seconds``."""

    def __init__(self, clock, seconds=WINDOW_SECONDS, max_kept=WINDOW_MAX):
        self._clock = clock
        self.seconds = seconds
        self._kept = collections.deque(maxlen=max_kept)  # (time, agreed)
        self._agreed = 0
        self.compared = 0  # since the start

    def observe(self, agreed):
        now = self._clock.seconds()
        self._expire(now)
        if len(self._kept) == self._kept.maxlen and self._kept[0][1]:
            self._agreed -= 1
        self._kept.append((now, agreed))
        self._agreed += agreed
        self.compared += 1

    def _expire(self, now):
        oldest = now - self.seconds
        while self._kept and self._kept[0][0] < oldest:
            self._agreed -= self._kept.popleft()[1]

    def rate(self):
        """The share of compared answers that agreed (0-1), None before the first."""
        self._expire(self._clock.seconds())
        return self._agreed / len(self._kept) if self._kept else None


def same_result(stable, candidate, tolerance=None):
    """Whether two ``predict_result`` values agree: equal as JSON, or, with ``tolerance``,
    numbers at most that far apart (in lists and objects too, which must have the same
    shape). A boolean is not a number here: ``true`` never matches ``1``."""
    if isinstance(stable, bool) or isinstance(candidate, bool):
        return type(stable) is type(candidate) and stable == candidate
    if isinstance(stable, numbers.Real) and isinstance(candidate, numbers.Real):
        return stable == candidate if tolerance is None else abs(stable - candidate) <= tolerance
    if isinstance(stable, dict) and isinstance(candidate, dict):
        return stable.keys() == candidate.keys() and all(
            same_result(stable[k], candidate[k], tolerance) for k in stable)
    if isinstance(stable, list) and isinstance(candidate, list):
        return len(stable) == len(candidate) and all(
            same_result(a, b, tolerance) for a, b in zip(stable, candidate))
    return type(stable) is type(candidate) and stable == candidate


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@attr.s(frozen=True)
class RollbackRule:
    """``ROLLBACK_ON``: the candidate is rolled back when, over the window and with at least
    ``min_requests`` of its answers in it, its error rate is over ``error_rate``, or its p99
    latency is over ``p99_ratio`` times the stable's (when both versions have at least
    ``min_requests`` and ``LATENCY_SAMPLES`` answers in the window: a p99 of fewer than 100
    answers is their slowest one, a single pause)."""

    LATENCY_SAMPLES = 100

    error_rate = attr.ib(default=DEFAULT_ERROR_RATE)
    p99_ratio = attr.ib(default=DEFAULT_P99_RATIO)
    min_requests = attr.ib(default=DEFAULT_MIN_REQUESTS)

    KEYS = ('ERROR_RATE', 'P99_RATIO', 'MIN_REQUESTS')

    @classmethod
    def from_body(cls, value):
        """The rule of a ``/rollout`` body's ``ROLLBACK_ON`` (absent: the defaults; ``false``:
        None, no automatic rollback); ``BadRequest`` naming the key that is wrong."""
        if value is None or value is True:
            return cls()
        if value is False:
            return None
        if not isinstance(value, dict):
            raise BadRequest('ROLLBACK_ON must be an object like {{"ERROR_RATE": {}, "P99_RATIO": {}, '
                             '"MIN_REQUESTS": {}}}, or false; got {!r}'.format(
                                 DEFAULT_ERROR_RATE, DEFAULT_P99_RATIO, DEFAULT_MIN_REQUESTS, value))
        unknown = [k for k in value if k not in cls.KEYS]
        if unknown:
            raise BadRequest('ROLLBACK_ON: unknown key {!r}; known: {}'.format(unknown[0], ', '.join(cls.KEYS)))
        rate = value.get('ERROR_RATE', DEFAULT_ERROR_RATE)
        if not _number(rate) or not 0 <= rate <= 1:
            raise BadRequest('ROLLBACK_ON: ERROR_RATE must be a number from 0 to 1, got {!r}'.format(rate))
        ratio = value.get('P99_RATIO', DEFAULT_P99_RATIO)
        if ratio is not None and (not _number(ratio) or ratio <= 0):
            raise BadRequest('ROLLBACK_ON: P99_RATIO must be a number > 0 (or null: no latency rule), '
                             'got {!r}'.format(ratio))
        least = value.get('MIN_REQUESTS', DEFAULT_MIN_REQUESTS)
        if not isinstance(least, int) or isinstance(least, bool) or least < 1:
            raise BadRequest('ROLLBACK_ON: MIN_REQUESTS must be an integer >= 1, got {!r}'.format(least))
        return cls(error_rate=float(rate), p99_ratio=None if ratio is None else float(ratio), min_requests=least)

    def shown(self):
        return {'ERROR_RATE': self.error_rate, 'P99_RATIO': self.p99_ratio, 'MIN_REQUESTS': self.min_requests}

    def error_verdict(self, candidate):
        """The reason to roll back on errors (one line naming the figure), or None."""
        n = candidate.count()
        if n < self.min_requests:
            return None
        rate = candidate.error_rate()
        if rate > self.error_rate:
            return 'ERROR_RATE {:.3f} over {} candidate answers in the last {:g}s > {:g}'.format(
                rate, n, candidate.seconds, self.error_rate)
        return None

    def latency_verdict(self, stable, candidate):
        """The reason to roll back on latency, or None (also while either version has too few
        answers in the window)."""
        least = max(self.min_requests, self.LATENCY_SAMPLES)
        if self.p99_ratio is None or candidate.count() < least or stable.count() < least:
            return None
        (stable_p99,), (candidate_p99,) = stable.quantiles(0.99), candidate.quantiles(0.99)
        if stable_p99 and candidate_p99 > self.p99_ratio * stable_p99:
            return 'P99_RATIO {:.2f} (candidate p99 {:.1f} ms, stable {:.1f} ms over the last {:g}s) > {:g}'.format(
                candidate_p99 / stable_p99, candidate_p99 * 1000, stable_p99 * 1000, candidate.seconds,
                self.p99_ratio)
        return None
