"""The keys of ``config_gateway.txt``: one table, read two ways.

Each ``Key`` holds the JSON Schema of its value and the rule in words. ``config.py``
validates a value with that schema (``Key.accepts``), and ``config_schema()`` prints the
same schemas as the file's JSON Schema (``bis-gateway schema``): an editor and the gateway
never disagree about what a key takes.
"""

import difflib

import attr
import jsonschema

from ..protocol import LOG_FORMATS, NR_WORKERS_RULE

# JSON Schema's own reading of types: true is not a number, 2.0 is an integer (``as_given``
# turns it into 2 before the gateway counts with it)
_Validator = jsonschema.Draft7Validator


@attr.s(frozen=True)
class Key:
    """One config key: ``schema`` (JSON Schema of its value), ``what`` (the rule in words,
    for messages) and ``description`` (what it does, for the published schema)."""

    schema = attr.ib()
    what = attr.ib()
    description = attr.ib(default='')
    _validator = attr.ib(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, '_validator', _Validator(self.schema))

    def accepts(self, value):
        return self._validator.is_valid(value)

    def as_given(self, value):
        """``value`` with an integral float of an integer key as an int (``2.0`` -> ``2``)."""
        if self.schema.get('type') == 'integer' and isinstance(value, float):
            return int(value)
        return value

    def published(self):
        schema = dict(self.schema)
        schema['description'] = '{} (must be {})'.format(self.description, self.what) if self.description \
            else 'must be {}'.format(self.what)
        return schema


def _integer(minimum, maximum=None):
    schema = {'type': 'integer', 'minimum': minimum}
    if maximum is not None:
        schema['maximum'] = maximum
    return schema


def _positive_number():
    return {'type': 'number', 'exclusiveMinimum': 0}


def _number_at_least(minimum):
    return {'type': 'number', 'minimum': minimum}


_BOOLEAN = {'type': 'boolean'}
_SECONDS = 'a number of seconds > 0'

ENDPOINT_KEYS = {
    'NR_WORKERS': Key(_integer(1), NR_WORKERS_RULE, 'worker instances in each model server process'),
    'HOST': Key({'type': 'string', 'minLength': 1}, 'a non-empty string',
                'address the model server binds to; "NO_HOST" makes the entry a support process'),
    'PORT': Key(_integer(1, 65535), 'an integer port 1-65535', 'first port of its replicas'),
    'DESCRIPTION': Key({'type': 'string'}, 'a string', 'shown in /list_servers'),
    'DISABLED': Key(_BOOLEAN, 'true or false', 'configured but not started (POST /start_server starts it)'),
    'SERVER_CLASS': Key({'type': 'string', 'minLength': 1, 'pattern': r'^[^/\\]+$'},
                        'the name of a file in the endpoints folder, without .py',
                        'the endpoint file to serve, when it is not named after the entry'),
    'PING_INTERVAL': Key(_positive_number(), _SECONDS, "a support process's period"),
    'TIMEOUT': Key(_positive_number(), _SECONDS, 'a request answers 504 after it'),
    'MAX_QUEUE': Key(_integer(0), 'an integer >= 0', 'requests that wait for a worker; more answer 503'),
    'REPLICAS': Key(_integer(1), 'an integer >= 1', 'model server processes serving this SIGNATURE'),
    'MAX_BATCH_SIZE': Key(_integer(1), 'an integer >= 1 (1: no batching)', 'dynamic batching: inputs per _predict'),
    'BATCH_TIMEOUT': Key(_number_at_least(0), 'a number of seconds >= 0', 'how long a batch waits to fill'),
    'MAX_BODY_MB': Key(_positive_number(), 'a number of MiB > 0', "cap on a request body to this endpoint"),
    'LOAD_TIMEOUT': Key(_positive_number(), _SECONDS, 'bound on start to ready (_load_model)'),
    'HEALTH_INTERVAL': Key(_positive_number(), _SECONDS, 'seconds between /health pings of a ready child'),
    'RETRY_ON_CRASH': Key(_BOOLEAN, 'true or false', 'a request a dying replica dropped goes to another once'),
    'STREAM': Key(_BOOLEAN, 'true or false (default: whether _predict is a generator)', 'answer NDJSON / SSE'),
    'MAX_RSS_MB': Key(_positive_number(), 'a number of MiB > 0', 'a child over it is replaced'),
    'MIN_REPLICAS': Key(_integer(1), 'an integer >= 1', 'autoscaling: lower bound'),
    'MAX_REPLICAS': Key(_integer(1, 64), 'an integer 1-64', 'autoscaling: upper bound'),
    'TARGET_IN_FLIGHT': Key(_positive_number(), 'a number of requests > 0', 'autoscaling: in flight per replica'),
    'UPSCALE_DELAY': Key(_number_at_least(0), 'a number of seconds >= 0', 'autoscaling: wait before growing'),
    'DOWNSCALE_DELAY': Key(_number_at_least(0), 'a number of seconds >= 0', 'autoscaling: wait before shrinking'),
    'DEVICES': Key({'type': 'array', 'minItems': 1, 'items': {'anyOf': [
        {'type': 'integer', 'minimum': 0}, {'type': 'string', 'pattern': '^cuda:[0-9]+$'}]}},
        'a non-empty list of devices, "cuda:0" or 0', 'CUDA device per replica, round robin'),
    'URLS_REFRESH': Key(_positive_number(), 'a number of seconds > 0 (how often a URLS host is resolved to all its '
                                            'addresses)', 'URLS: how often a host is resolved again'),
    'URLS': Key({'type': 'array', 'minItems': 1, 'items': {'type': 'string', 'pattern': '^https?://'}},
                'a non-empty list of http:// URLs', 'model servers elsewhere: routed to, not spawned'),
}

TOP_KEYS = {
    'DEFAULT_SERVER': Key({'type': ['string', 'null']}, 'the name of an endpoint',
                          'the endpoint the gateway waits for before serving /run (unless NO_STARTUP_WAIT)'),
    'NO_STARTUP_WAIT': Key(_BOOLEAN, 'true or false', 'serve at once, without waiting for DEFAULT_SERVER'),
    'SERVER_NAME': Key({'type': 'string'}, 'a string', 'shown in /system_status'),
    'CONFIG_ENDPOINTS': Key({'type': 'object'}, 'an object of endpoint entries', 'the endpoints, by SIGNATURE'),
    'MAX_BODY_MB': Key(_positive_number(), 'a number of MiB > 0', 'cap on a request body'),
    'METRICS_REQUIRE_TOKEN': Key(_BOOLEAN, 'true or false', '/metrics under the admin rule'),
    'METRICS': Key(_BOOLEAN, 'true or false', 'false: no request statistics, /metrics answers 404'),
    'API_KEYS': Key({'type': 'string', 'pattern': r'\S'}, 'the path of the API keys file (JSON)',
                    '/run needs a key from this file'),
    'LOG_FORMAT': Key({'enum': list(LOG_FORMATS)}, '"text" or "json" (one JSON object per log line)',
                      'the log format of the gateway and its model servers (BIS_LOG_FORMAT wins)'),
    'ACCESS_LOG': Key(_BOOLEAN, 'true or false', 'one log line per request (default true)'),
    'HTTP_FRONT': Key({'enum': ['twisted', 'httptools']}, '"twisted" or "httptools"',
                      "the HTTP server of the gateway's port: llhttp's (the default) or twisted.web's (BIS_HTTP_FRONT wins)"),
    # the HTTP limits (limits.py)
    'HEAD_TIMEOUT': Key(_positive_number(), _SECONDS, "a client's request line and headers must arrive within it"),
    'BODY_TIMEOUT': Key(_positive_number(), _SECONDS, "a client's body must arrive within it"),
    'MAX_CONNECTIONS': Key(_integer(1), 'an integer >= 1', 'open client connections at most'),
    'MAX_BODIES_MB': Key(_positive_number(), 'a number of MiB > 0', 'request bodies held at once, in total'),
    'MAX_ANSWER_MB': Key(_positive_number(), 'a number of MiB > 0', "cap on a model server's answer (502 over it)"),
}


def suggestion(key, known):
    """The known key ``key`` is most likely a misspelling of, or None."""
    if not isinstance(key, str):
        return None
    same_but_case = [k for k in known if k == key.upper()]
    close = same_but_case or difflib.get_close_matches(key.upper(), list(known), n=1, cutoff=0.8)
    return close[0] if close else None


# an endpoint's name: it names files, processes, URLs and metrics ("#" and "@" are the gateway's
# marks for replicas and rollout candidates)
ENDPOINT_NAME_PATTERN = '[A-Za-z0-9_][A-Za-z0-9_.-]*'


def config_schema():
    """The JSON Schema of ``config_gateway.txt``, from ``TOP_KEYS`` and ``ENDPOINT_KEYS``. An
    entry's other keys are the worker's own config, so an entry takes any key besides."""
    entry = {'type': 'object', 'properties': {name: key.published() for name, key in ENDPOINT_KEYS.items()},
             'additionalProperties': True,
             'dependencies': {'MIN_REPLICAS': ['MAX_REPLICAS', 'TARGET_IN_FLIGHT'],
                              'MAX_REPLICAS': ['TARGET_IN_FLIGHT'], 'TARGET_IN_FLIGHT': ['MAX_REPLICAS']}}
    top = {name: key.published() for name, key in TOP_KEYS.items()}
    top['CONFIG_ENDPOINTS'] = dict(top['CONFIG_ENDPOINTS'], additionalProperties=entry,
                                   propertyNames={'pattern': '^{}$'.format(ENDPOINT_NAME_PATTERN)})
    return {'$schema': 'http://json-schema.org/draft-07/schema#',
            'title': 'bis_twisted gateway config (config_gateway.txt)',
            'type': 'object', 'required': ['CONFIG_ENDPOINTS'], 'properties': top, 'additionalProperties': False}
