"""Load and validate ``config_gateway.txt``; nothing else.

Everything is checked before anything starts. A config that cannot be used raises
``ConfigError`` with one line naming the file, the endpoint and the key, e.g.
``config_gateway.txt: endpoint 'demo': key 'NR_WORKERS' must be an integer >= 1, got 'two'``.
"""

import ast
import difflib
import json
import os

import attr

from ..errors import ConfigError
from ..protocol import (DEFAULT_MAX_BODY_MB, DEFAULT_MAX_QUEUE, LOG_FORMATS, NR_WORKERS_RULE, endpoint_file,
                        expected_class_name, valid_nr_workers)

NO_HOST = 'NO_HOST'
DEFAULT_TIMEOUT = 60.0
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_LOAD_TIMEOUT = 600.0
DEFAULT_HEALTH_INTERVAL = 1.0
DEFAULT_MAX_ANSWER_MB = 64
DEFAULT_UPSCALE_DELAY = 5.0
DEFAULT_DOWNSCALE_DELAY = 60.0


@attr.s(frozen=True)
class EndpointConfig:
    """One entry of ``CONFIG_ENDPOINTS``; ``entry`` is the whole dict, which the worker reads."""

    name = attr.ib()
    server_class = attr.ib()
    entry = attr.ib(repr=False)
    host = attr.ib(default='127.0.0.1')
    ports = attr.ib(default=())  # one per replica; empty for support processes and URLS
    nr_workers = attr.ib(default=1)
    description = attr.ib(default='')
    disabled = attr.ib(default=False)
    timeout = attr.ib(default=DEFAULT_TIMEOUT)
    max_queue = attr.ib(default=DEFAULT_MAX_QUEUE)
    replicas = attr.ib(default=1)
    urls = attr.ib(default=())
    ping_interval = attr.ib(default=DEFAULT_PING_INTERVAL)
    has_file = attr.ib(default=True)
    load_timeout = attr.ib(default=DEFAULT_LOAD_TIMEOUT)  # spawn to ready, at most
    health_interval = attr.ib(default=DEFAULT_HEALTH_INTERVAL)  # seconds between /health pings
    retry_on_crash = attr.ib(default=True)  # a request a dying replica dropped goes to another once
    max_rss_mb = attr.ib(default=None)  # a child over it is recycled
    spare_ports = attr.ib(default=())  # one per slot: where a reload starts the new process
    min_replicas = attr.ib(default=None)  # autoscaling bounds (None: no autoscaling)
    max_replicas = attr.ib(default=None)
    target_in_flight = attr.ib(default=None)  # requests in flight per ready replica the scaler aims at
    upscale_delay = attr.ib(default=DEFAULT_UPSCALE_DELAY)
    downscale_delay = attr.ib(default=DEFAULT_DOWNSCALE_DELAY)
    devices = attr.ib(default=())  # CUDA device numbers, given to replicas round robin

    @property
    def slots(self):
        """Replica slots with a port reserved: REPLICAS, or MAX_REPLICAS when it scales."""
        return len(self.ports)

    @property
    def autoscaled(self):
        return self.max_replicas is not None and self.target_in_flight is not None

    def device_of(self, index):
        """The CUDA device number of replica ``index`` (round robin), or None."""
        return self.devices[index % len(self.devices)] if self.devices else None

    @property
    def is_support(self):
        return self.host == NO_HOST

    @property
    def is_remote(self):
        return bool(self.urls)

    @property
    def is_spawned(self):
        return not self.is_support and not self.is_remote

    @property
    def port(self):
        return self.ports[0] if self.ports else None


@attr.s(frozen=True)
class GatewayConfig:
    path = attr.ib()
    default_server = attr.ib()
    no_startup_wait = attr.ib()
    server_name = attr.ib()
    endpoints = attr.ib()  # tuple of EndpointConfig, in file order
    extra = attr.ib(factory=dict, repr=False)  # other top-level keys
    max_body_mb = attr.ib(default=DEFAULT_MAX_BODY_MB)
    metrics_require_token = attr.ib(default=False)  # /metrics under the admin rule
    metrics = attr.ib(default=True)  # false: no request statistics at all (/metrics answers 404)
    warnings = attr.ib(default=())  # one line each, logged at start: keys that look like typos
    http_limits = attr.ib(factory=dict)  # the HTTP_LIMIT_KEYS the file sets
    max_answer_mb = attr.ib(default=DEFAULT_MAX_ANSWER_MB)  # a model server's answer over it: 502
    api_keys = attr.ib(default=None)  # path of the API_KEYS file (absolute), or None: /run is open

    def endpoint(self, name):
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    @property
    def names(self):
        return [e.name for e in self.endpoints]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _device_number(value):
    """``"cuda:1"`` or ``1`` -> 1; anything else -> None."""
    if _is_int(value) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith('cuda:') and value[5:].isdigit():
        return int(value[5:])
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# key -> (check, what it must be)
_ENDPOINT_KEYS = {
    'NR_WORKERS': (valid_nr_workers, NR_WORKERS_RULE),
    'HOST': (lambda v: isinstance(v, str) and v, 'a non-empty string'),
    'PORT': (lambda v: _is_int(v) and 1 <= v <= 65535, 'an integer port 1-65535'),
    'DESCRIPTION': (lambda v: isinstance(v, str), 'a string'),
    'DISABLED': (lambda v: isinstance(v, bool), 'true or false'),
    'SERVER_CLASS': (lambda v: isinstance(v, str) and v and '/' not in v and '\\' not in v,
                     'the name of a file in the endpoints folder, without .py'),
    'PING_INTERVAL': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'MAX_QUEUE': (lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    'REPLICAS': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    'MAX_BATCH_SIZE': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1 (1: no batching)'),
    'BATCH_TIMEOUT': (lambda v: _is_number(v) and v >= 0, 'a number of seconds >= 0'),
    'MAX_BODY_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
    'LOAD_TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'HEALTH_INTERVAL': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'RETRY_ON_CRASH': (lambda v: isinstance(v, bool), 'true or false'),
    'STREAM': (lambda v: isinstance(v, bool), 'true or false (default: whether _predict is a generator)'),
    'MAX_RSS_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
    'MIN_REPLICAS': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    'MAX_REPLICAS': (lambda v: _is_int(v) and 1 <= v <= 64, 'an integer 1-64'),
    'TARGET_IN_FLIGHT': (lambda v: _is_number(v) and v > 0, 'a number of requests > 0'),
    'UPSCALE_DELAY': (lambda v: _is_number(v) and v >= 0, 'a number of seconds >= 0'),
    'DOWNSCALE_DELAY': (lambda v: _is_number(v) and v >= 0, 'a number of seconds >= 0'),
    'DEVICES': (lambda v: isinstance(v, list) and v and all(_device_number(d) is not None for d in v),
                'a non-empty list of devices, "cuda:0" or 0'),
    'URLS_REFRESH': (lambda v: _is_number(v) and v > 0,
                     'a number of seconds > 0 (how often a URLS host is resolved to all its addresses)'),
    'URLS': (lambda v: isinstance(v, list) and v and all(
        isinstance(u, str) and u.startswith(('http://', 'https://')) for u in v),
        'a non-empty list of http:// URLs'),
}

_TOP_KEYS = {
    'DEFAULT_SERVER': (lambda v: v is None or isinstance(v, str), 'the name of an endpoint'),
    'NO_STARTUP_WAIT': (lambda v: isinstance(v, bool), 'true or false'),
    'SERVER_NAME': (lambda v: isinstance(v, str), 'a string'),
    'CONFIG_ENDPOINTS': (lambda v: isinstance(v, dict), 'an object of endpoint entries'),
    'MAX_BODY_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
    'METRICS_REQUIRE_TOKEN': (lambda v: isinstance(v, bool), 'true or false'),
    'METRICS': (lambda v: isinstance(v, bool), 'true or false'),
    'API_KEYS': (lambda v: isinstance(v, str) and v.strip(), 'the path of the API keys file (JSON)'),
    'LOG_FORMAT': (lambda v: v in LOG_FORMATS, '"text" or "json" (one JSON object per log line)'),
    # the HTTP limits (limits.py)
    'HEAD_TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'BODY_TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'MAX_CONNECTIONS': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    'MAX_BODIES_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
    'MAX_ANSWER_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
}
HTTP_LIMIT_KEYS = ('HEAD_TIMEOUT', 'BODY_TIMEOUT', 'MAX_CONNECTIONS', 'MAX_BODIES_MB')


def load_config(path, endpoints_dir='endpoints', gateway_port=5002, default_host='127.0.0.1', keep_ports=None):
    """Read ``path`` and return a ``GatewayConfig`` with ports assigned, or raise ConfigError.
    ``keep_ports``: see ``_assign_ports`` (a reload keeps the running servers' ports)."""
    data = read_json_file(path, 'the config file')
    return parse_config(data, path, endpoints_dir, gateway_port, default_host, keep_ports)


def read_json_file(path, what):
    """The JSON in ``path``, or ConfigError naming the file (``what`` it is, if unreadable)."""
    try:
        with open(path, encoding='utf-8') as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError('{}: cannot read {}: {}'.format(path, what, exc.strerror)) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError('{}: not valid JSON: {}'.format(path, exc)) from None


def _check_scaling(where, entry):
    scaling = [k for k in ('MIN_REPLICAS', 'MAX_REPLICAS', 'TARGET_IN_FLIGHT') if k in entry]
    if not scaling:
        return
    if len(scaling) < 3 and ('MAX_REPLICAS' not in entry or 'TARGET_IN_FLIGHT' not in entry):
        missing = [k for k in ('MAX_REPLICAS', 'TARGET_IN_FLIGHT') if k not in entry]
        raise ConfigError('{}: autoscaling needs {} too (it has {})'.format(where, ' and '.join(map(repr, missing)),
                                                                           ', '.join(map(repr, scaling))))
    low, start, high = entry.get('MIN_REPLICAS', 1), entry.get('REPLICAS', 1), entry['MAX_REPLICAS']
    if not low <= start <= high:
        raise ConfigError("{}: key 'REPLICAS' ({}) must be between 'MIN_REPLICAS' ({}) and 'MAX_REPLICAS' ({})".format(
            where, start, low, high))


def parse_config(data, label, endpoints_dir='endpoints', gateway_port=5002, default_host='127.0.0.1',
                 keep_ports=None):
    if not isinstance(data, dict):
        raise ConfigError('{}: the top level must be a JSON object'.format(label))
    if 'CONFIG_ENDPOINTS' not in data:
        raise ConfigError("{}: key 'CONFIG_ENDPOINTS' is missing (an object of endpoint entries)".format(label))
    for key, (check, what) in _TOP_KEYS.items():
        if key in data and not check(data[key]):
            raise ConfigError('{}: key {!r} must be {}, got {!r}'.format(label, key, what, data[key]))

    entries = []
    for name, entry in data['CONFIG_ENDPOINTS'].items():
        where = '{}: endpoint {!r}'.format(label, name)
        if not isinstance(entry, dict):
            raise ConfigError('{}: must be an object of settings, got {!r}'.format(where, entry))
        for key, (check, what) in _ENDPOINT_KEYS.items():
            if key in entry and not check(entry[key]):
                raise ConfigError('{}: key {!r} must be {}, got {!r}'.format(where, key, what, entry[key]))
        _check_scaling(where, entry)
        entries.append((name, entry, where))

    endpoints = _assign_ports(entries, label, endpoints_dir, gateway_port, default_host, keep_ports)
    warnings = [_typo_warning(label, key, _TOP_KEYS, ' (ignored)') for key in data]
    for (name, entry, where), endpoint in zip(entries, endpoints):
        worker_keys = _worker_config_keys(endpoints_dir, endpoint.server_class) if endpoint.has_file else set()
        warnings += [_typo_warning(where, key, _ENDPOINT_KEYS, ' (passed to the worker as config)')
                     for key in entry if key not in worker_keys]
    names = [e.name for e in endpoints]
    default_server = data.get('DEFAULT_SERVER')
    if default_server is not None and default_server not in names:
        raise ConfigError("{}: key 'DEFAULT_SERVER' names {!r}, which is not in CONFIG_ENDPOINTS ({})".format(
            label, default_server, ', '.join(names) or 'none'))
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
    return GatewayConfig(path=label, default_server=default_server,
                         no_startup_wait=data.get('NO_STARTUP_WAIT', False),
                         server_name=data.get('SERVER_NAME', ''), endpoints=tuple(endpoints), extra=extra,
                         max_body_mb=data.get('MAX_BODY_MB', DEFAULT_MAX_BODY_MB),
                         metrics_require_token=data.get('METRICS_REQUIRE_TOKEN', False),
                         metrics=data.get('METRICS', True), warnings=tuple(w for w in warnings if w),
                         http_limits={k: data[k] for k in HTTP_LIMIT_KEYS if k in data},
                         max_answer_mb=data.get('MAX_ANSWER_MB', DEFAULT_MAX_ANSWER_MB),
                         api_keys=_beside(label, data.get('API_KEYS')))


def _beside(config_path, path):
    """``path`` as given (absolute), or relative to the config file's folder."""
    if path is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), os.path.expanduser(path.strip()))


def _typo_warning(where, key, known, consequence=''):
    """A line saying ``key`` looks like a misspelt one of ``known``, or None: a key of an
    entry may be anything (the worker's config), so only one close to a gateway key is named."""
    if key in known or not isinstance(key, str):
        return None
    same_but_case = [k for k in known if k == key.upper()]
    close = same_but_case or difflib.get_close_matches(key.upper(), list(known), n=1, cutoff=0.8)
    if not close:
        return None
    return '{}: key {!r} is not a gateway key; did you mean {!r}?{}'.format(where, key, close[0], consequence)


def _worker_config_keys(endpoints_dir, server_class):
    """The keys of the endpoint file's ``_CONFIG`` literal: the worker's own settings, never typos."""
    try:
        with open(endpoint_file(endpoints_dir, server_class), encoding='utf-8') as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == '_CONFIG' for t in node.targets)):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


def _check_endpoint_file(where, endpoints_dir, server_class, required, by_key):
    """``by_key``: the entry names the file with SERVER_CLASS (else the file is named after
    the endpoint), so that the message blames the key only when there is one."""
    path = endpoint_file(endpoints_dir, server_class)
    blame = "{}: key 'SERVER_CLASS'".format(where) if by_key else where
    if not os.path.isfile(path):
        if required:
            hint = '' if by_key else " (the file is named after the endpoint; set 'SERVER_CLASS' to use another)"
            raise ConfigError('{}: endpoint file {} does not exist{}'.format(blame, path, hint))
        return False
    try:
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), filename=path)
    except SyntaxError as exc:
        raise ConfigError('{}: endpoint file {}:{}: syntax error: {}'.format(where, path, exc.lineno, exc.msg)) from None
    if required:
        # checked without importing the file: user code (and its heavy imports) stays out
        # of the gateway process
        wanted = expected_class_name(server_class).lower()
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        if wanted not in [c.lower() for c in classes]:
            raise ConfigError("{}: {} has no class {} (the file's name without underscores + 'Worker', "
                              "any case; found: {})".format(blame, path, expected_class_name(server_class),
                                                            ', '.join(classes) or 'none'))
    return True


def _slots(entry):
    return max(entry.get('REPLICAS', 1), entry.get('MAX_REPLICAS', 1))


def _assign_ports(entries, label, endpoints_dir, gateway_port, default_host, keep_ports=None):
    """Live ports first, in the file's order (as without reloads), then a spare port per slot
    for each spawned endpoint (where a reload starts the new process). ``keep_ports``
    (``{name: (ports, spare_ports)}`` of the config being replaced) keeps a running
    endpoint's ports when its entry still fits them, and keeps new ones off them."""
    keep_ports = keep_ports or {}
    taken = {gateway_port: 'the gateway'}
    for name, entry, where in entries:
        if 'PORT' in entry and entry.get('HOST') != NO_HOST and not entry.get('URLS'):
            port = entry['PORT']
            for p in range(port, port + _slots(entry)):
                if p in taken:
                    raise ConfigError("{}: key 'PORT': port {} is already used by {}".format(where, p, taken[p]))
                taken[p] = 'endpoint {!r}'.format(name)
    spawned = [(name, entry) for name, entry, _ in entries if entry.get('HOST') != NO_HOST and not entry.get('URLS')]
    kept = {}
    for name, entry in spawned:
        old = keep_ports.get(name)
        if old and len(old[0]) == _slots(entry) and ('PORT' not in entry or old[0][0] == entry['PORT']):
            kept[name] = old
    for ports, spares in keep_ports.values():
        for p in tuple(ports) + tuple(spares):
            taken.setdefault(p, True)

    next_port = [gateway_port + 1]

    def free_port():
        while next_port[0] in taken:
            next_port[0] += 1
        port = next_port[0]
        taken[port] = True
        return port

    # in the file's order, disabled servers too: a server's port does not move when another
    # one is enabled, disabled or added after it
    ports = {}
    for name, entry, where in entries:
        if entry.get('HOST') == NO_HOST or entry.get('URLS'):
            ports[name] = ()
        elif name in kept:
            ports[name] = tuple(kept[name][0])
        elif 'PORT' in entry:
            ports[name] = tuple(range(entry['PORT'], entry['PORT'] + _slots(entry)))
        else:
            ports[name] = tuple(free_port() for _ in range(_slots(entry)))
    spare_ports = {}
    for name, entry in spawned:
        spare_ports[name] = tuple(kept[name][1]) if name in kept else tuple(free_port() for _ in ports[name])

    endpoints = []
    for name, entry, where in entries:
        host = entry.get('HOST', default_host)
        server_class = entry.get('SERVER_CLASS', name)
        support = host == NO_HOST
        remote = bool(entry.get('URLS'))
        has_file = _check_endpoint_file(where, endpoints_dir, server_class, required=not (support or remote),
                                        by_key='SERVER_CLASS' in entry)
        endpoints.append(EndpointConfig(
            name=name, server_class=server_class, entry=dict(entry), host=host, ports=ports[name],
            nr_workers=entry.get('NR_WORKERS', 1), description=entry.get('DESCRIPTION', ''),
            disabled=entry.get('DISABLED', False), timeout=float(entry.get('TIMEOUT', DEFAULT_TIMEOUT)),
            max_queue=entry.get('MAX_QUEUE', DEFAULT_MAX_QUEUE), replicas=entry.get('REPLICAS', 1),
            urls=tuple(u.rstrip('/') for u in entry.get('URLS', ())),
            ping_interval=float(entry.get('PING_INTERVAL', DEFAULT_PING_INTERVAL)), has_file=has_file,
            load_timeout=float(entry.get('LOAD_TIMEOUT', DEFAULT_LOAD_TIMEOUT)),
            health_interval=float(entry.get('HEALTH_INTERVAL', DEFAULT_HEALTH_INTERVAL)),
            retry_on_crash=entry.get('RETRY_ON_CRASH', True),
            max_rss_mb=entry.get('MAX_RSS_MB'), spare_ports=spare_ports.get(name, ()),
            min_replicas=entry.get('MIN_REPLICAS'), max_replicas=entry.get('MAX_REPLICAS'),
            target_in_flight=entry.get('TARGET_IN_FLIGHT'),
            upscale_delay=float(entry.get('UPSCALE_DELAY', DEFAULT_UPSCALE_DELAY)),
            downscale_delay=float(entry.get('DOWNSCALE_DELAY', DEFAULT_DOWNSCALE_DELAY)),
            devices=tuple(_device_number(d) for d in entry.get('DEVICES', ()))))
    return endpoints
