"""The ``/metrics`` families of rollouts, read at scrape time: each version's answers and
errors since the rollout started, its p50/p99 over the window, a shadow's agreement and the
rollout's state, all with an ``endpoint`` label and (but the last two) a ``version`` one."""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STATES = ('starting', 'canary', 'shadow', 'promoting', 'rolled_back', 'promoted', 'aborted')


class RolloutCollector:
    """Registered in the gateway's registry; ``rollouts`` is its ``Rollouts``."""

    def __init__(self, rollouts):
        self._rollouts = rollouts

    def collect(self):
        requests = CounterMetricFamily('bis_rollout_requests', 'Answers of an endpoint under rollout since it '
                                       'started, by version ("stable", "candidate"; a shadow\'s copies count '
                                       'as the candidate\'s)', labels=['endpoint', 'version'])
        errors = CounterMetricFamily('bis_rollout_errors', 'Error answers (5xx, worker errors, timeouts) of an '
                                     'endpoint under rollout, by version', labels=['endpoint', 'version'])
        latency = GaugeMetricFamily('bis_rollout_latency_seconds', 'Latency quantiles over the rollout\'s window, '
                                    'by version', labels=['endpoint', 'version', 'quantile'])
        agreement = GaugeMetricFamily('bis_rollout_agreement', 'Share of a shadow\'s answers equal to the '
                                      'stable ones over the window (0-1)', labels=['endpoint'])
        state = GaugeMetricFamily('bis_rollout_state', 'The state of an endpoint\'s latest rollout (1 for the '
                                  'state it is in)', labels=['endpoint', 'state'])
        for name, rollout in sorted(self._rollouts.last.items()):
            for version, window in rollout.windows.items():
                requests.add_metric([name, version], window.requests)
                errors.add_metric([name, version], window.errors)
                for q, value in zip(('0.5', '0.99'), window.quantiles(0.5, 0.99)):
                    if value is not None:
                        latency.add_metric([name, version, q], value)
            rate = rollout.agreement.rate()
            if rollout.plan.shadow and rate is not None:
                agreement.add_metric([name], rate)
            for known in STATES:
                state.add_metric([name, known], 1.0 if rollout.state == known else 0.0)
        return [requests, errors, latency, agreement, state]
