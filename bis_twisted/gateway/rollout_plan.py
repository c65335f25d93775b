"""What a rollout runs: a ``/rollout`` body read into a ``Plan`` (``BadRequest`` naming the key
that is wrong), and the config entries it makes, the candidate's beside the stable and the
stable's once the candidate is promoted (``BadRequest`` naming the file or key, as the config
file's own check does).
"""

import re

import attr

from ..errors import BadRequest, ConfigError
from .config import ENDPOINT_NAME, parse_config
from .rollout_stats import RollbackRule

CANDIDATE_SUFFIX = '@candidate'
# an endpoint's name, or its candidate's: the endpoint's and the suffix, which the config never allows
ROLLOUT_NAME = re.compile(ENDPOINT_NAME.pattern + '(?:' + re.escape(CANDIDATE_SUFFIX) + ')?')
DEFAULT_CANARY_PERCENT = 10.0

ROLLOUT_KEYS = ('SIGNATURE', 'SERVER_CLASS', 'PERCENT', 'SHADOW', 'TOLERANCE', 'CONFIG', 'ROLLBACK_ON',
                'PROMOTE', 'ABORT')
# keys of CONFIG a candidate cannot have: where and how it runs is the rollout's to say
REFUSED_CONFIG_KEYS = ('PORT', 'HOST', 'URLS', 'SERVER_CLASS', 'DISABLED', 'MIN_REPLICAS', 'MAX_REPLICAS',
                       'TARGET_IN_FLIGHT')
# keys of the stable's entry the candidate does not inherit (it runs its own REPLICAS, no autoscaling)
STABLE_ONLY_KEYS = ('PORT', 'REPLICAS', 'MIN_REPLICAS', 'MAX_REPLICAS', 'TARGET_IN_FLIGHT', 'UPSCALE_DELAY',
                    'DOWNSCALE_DELAY', 'DISABLED', 'DEVICES')
# keys of CONFIG that stay the candidate's own when it is promoted
CANDIDATE_ONLY_KEYS = ('REPLICAS',)


@attr.s(frozen=True)
class Plan:
    """What a ``/rollout`` body that starts a rollout asks for."""

    endpoint = attr.ib()
    server_class = attr.ib()  # None: the stable's own file, read again
    percent = attr.ib()
    shadow = attr.ib()
    tolerance = attr.ib()  # None: numbers must be equal
    overrides = attr.ib()  # CONFIG
    rule = attr.ib()  # a RollbackRule, or None: no automatic rollback


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_plan(inputs):
    """The ``Plan`` of a ``/rollout`` body that starts one (``SIGNATURE`` checked already);
    ``BadRequest`` naming the key that is wrong."""
    unknown = [k for k in inputs if k not in ROLLOUT_KEYS]
    if unknown:
        raise BadRequest('/rollout: unknown key {!r}; known: {}'.format(unknown[0], ', '.join(ROLLOUT_KEYS)))
    shadow = inputs.get('SHADOW', False)
    if not isinstance(shadow, bool):
        raise BadRequest('SHADOW must be true or false, got {!r}'.format(shadow))
    percent = inputs.get('PERCENT', 100.0 if shadow else DEFAULT_CANARY_PERCENT)
    if not _is_number(percent) or not 0 <= percent <= 100:
        raise BadRequest('PERCENT must be a number from 0 to 100 (the share of requests the candidate {}), '
                         'got {!r}'.format('gets a copy of' if shadow else 'serves', percent))
    server_class = inputs.get('SERVER_CLASS')
    if server_class is not None and (not isinstance(server_class, str) or not server_class.strip()):
        raise BadRequest('SERVER_CLASS must name an endpoint file (without .py), got {!r}'.format(server_class))
    tolerance = inputs.get('TOLERANCE')
    if tolerance is not None and (not _is_number(tolerance) or tolerance < 0):
        raise BadRequest('TOLERANCE must be a number >= 0 (how far apart two numbers may be and agree), '
                         'got {!r}'.format(tolerance))
    overrides = inputs.get('CONFIG', {})
    if not isinstance(overrides, dict):
        raise BadRequest('CONFIG must be an object of config keys for the candidate, got {!r}'.format(overrides))
    refused = [k for k in overrides if k in REFUSED_CONFIG_KEYS]
    if refused:
        raise BadRequest('CONFIG cannot set {!r}: the candidate runs on ports of its own, beside the stable{}'.format(
            refused[0], '; give SERVER_CLASS at the top of the body' if refused[0] == 'SERVER_CLASS' else ''))
    return Plan(endpoint=inputs['SIGNATURE'], server_class=server_class, percent=float(percent), shadow=shadow,
                tolerance=tolerance, overrides=dict(overrides), rule=RollbackRule.from_body(inputs.get('ROLLBACK_ON')))


def candidate_entry(stable, plan):
    """The candidate's config entry: the stable's, without where and how many it runs, with
    ``SERVER_CLASS`` and ``CONFIG`` applied."""
    entry = {k: v for k, v in stable.entry.items() if k not in STABLE_ONLY_KEYS}
    entry['SERVER_CLASS'] = plan.server_class or stable.server_class
    entry.update(plan.overrides)
    return entry


def promoted_entry(stable, plan):
    """The stable's entry with the candidate's ``SERVER_CLASS`` and ``CONFIG`` (but its own
    ``REPLICAS``)."""
    entry = dict(stable.entry)
    if plan.server_class is not None:
        entry['SERVER_CLASS'] = plan.server_class
    entry.update({k: v for k, v in plan.overrides.items() if k not in CANDIDATE_ONLY_KEYS})
    return entry


def endpoint_of(name, entry, endpoints_dir, gateway_port, keep_ports):
    """The ``EndpointConfig`` of one entry, checked as the config file's are; ports counted
    from ``gateway_port`` + 1, off those ``keep_ports`` holds (see ``config.parse_config``)."""
    try:
        config = parse_config({'CONFIG_ENDPOINTS': {name: entry}}, '/rollout', endpoints_dir, gateway_port,
                              keep_ports=keep_ports, endpoint_name=ROLLOUT_NAME)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None
    return config.endpoints[0]
