"""Load and validate ``config_gateway.txt``; nothing else.

Everything is checked before anything starts. A config that cannot be used raises
``ConfigError`` with one line naming the file, the endpoint and the key, e.g.
``config_gateway.txt: endpoint 'demo': key 'NR_WORKERS' must be an integer >= 1, got 'two'``.
"""

import ast
import json
import os
import re

import attr

from ..errors import ConfigError
from ..protocol import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_QUEUE, endpoint_file, expected_class_name
from .config_keys import ENDPOINT_KEYS, ENDPOINT_NAME_PATTERN, TOP_KEYS, suggestion

ENDPOINT_NAME = re.compile(ENDPOINT_NAME_PATTERN)  # fullmatch: an endpoint's name in the config

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
    spare_ports = attr.ib(default=())  # one per replica: where a reload starts the new process
    nice = attr.ib(default=None)  # the children's nice value, when not the gateway's (a shadow candidate's)
    min_replicas = attr.ib(default=None)  # autoscaling bounds (None: no autoscaling)
    max_replicas = attr.ib(default=None)
    target_in_flight = attr.ib(default=None)  # requests in flight per ready replica the scaler aims at
    upscale_delay = attr.ib(default=DEFAULT_UPSCALE_DELAY)
    downscale_delay = attr.ib(default=DEFAULT_DOWNSCALE_DELAY)
    devices = attr.ib(default=())  # CUDA device numbers, given to replicas round robin

    @property
    def reserved_replicas(self):
        """Replicas with a port reserved: REPLICAS, or MAX_REPLICAS when it scales."""
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
    access_log = attr.ib(default=True)  # one log line per request (accesslog.py)
    http_front = attr.ib(default=None)  # HTTP_FRONT: "twisted" or "httptools" (shared/front.py), None: the default

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
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if _is_int(value) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith('cuda:') and value[5:].isdigit():
        return int(value[5:])
    return None


# the keys and their rules: one table (config_keys.py), also published as a JSON Schema
_ENDPOINT_KEYS = ENDPOINT_KEYS
_TOP_KEYS = TOP_KEYS
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
                 keep_ports=None, endpoint_name=ENDPOINT_NAME):
    if not isinstance(data, dict):
        raise ConfigError('{}: the top level must be a JSON object'.format(label))
    if 'CONFIG_ENDPOINTS' not in data:
        raise ConfigError("{}: key 'CONFIG_ENDPOINTS' is missing (an object of endpoint entries)".format(label))
    for key, rule in _TOP_KEYS.items():
        if key in data and not rule.accepts(data[key]):
            raise ConfigError('{}: key {!r} must be {}, got {!r}'.format(label, key, rule.what, data[key]))
    data = {k: _TOP_KEYS[k].as_given(v) if k in _TOP_KEYS else v for k, v in data.items()}

    entries = []
    for name, entry in data['CONFIG_ENDPOINTS'].items():
        where = '{}: endpoint {!r}'.format(label, name)
        if not endpoint_name.fullmatch(name):
            raise ConfigError('{}: a name of letters, digits, "_", "-" and "." only, please (it names files, '
                              'processes, URLs and metrics; "#" and "@" mark replicas and rollout candidates)'
                              .format(where))
        if not isinstance(entry, dict):
            raise ConfigError('{}: must be an object of settings, got {!r}'.format(where, entry))
        for key, rule in _ENDPOINT_KEYS.items():
            if key in entry and not rule.accepts(entry[key]):
                raise ConfigError('{}: key {!r} must be {}, got {!r}'.format(where, key, rule.what, entry[key]))
        entry = {k: _ENDPOINT_KEYS[k].as_given(v) if k in _ENDPOINT_KEYS else v for k, v in entry.items()}
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
                         api_keys=_beside(label, data.get('API_KEYS')),
                         access_log=data.get('ACCESS_LOG', True), http_front=data.get('HTTP_FRONT'))


def _beside(config_path, path):
    """``path`` as given (absolute), or relative to the config file's folder."""
    if path is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), os.path.expanduser(path.strip()))


def _typo_warning(where, key, known, consequence=''):
    """A line saying ``key`` looks like a misspelt one of ``known``, or None: a key of an
    entry may be anything (the worker's config), so only one close to a gateway key is named."""
    if key in known:
        return None
    close = suggestion(key, known)
    if close is None:
        return None
    return '{}: key {!r} is not a gateway key; did you mean {!r}?{}'.format(where, key, close, consequence)


def unknown_key_problems(data, label, endpoints_dir):
    """``bis-gateway check``'s stricter reading of the keys, one line each: a top-level key
    the gateway does not know, and an entry's key that is neither a gateway key nor one its
    endpoint file reads (its ``_CONFIG``, a ``cfg_<key>`` or the key's name in quotes), each
    with the gateway key it most resembles. Serving only warns about the likely typos."""
    if not isinstance(data, dict):
        return []
    problems = []
    for key in data:
        if key not in _TOP_KEYS:
            close = suggestion(key, _TOP_KEYS)
            problems.append('{}: top level: key {!r} is not a gateway key; {}'.format(
                label, key, 'did you mean {!r}?'.format(close) if close else 'known: ' + ', '.join(_TOP_KEYS)))
    entries = data.get('CONFIG_ENDPOINTS')
    for name, entry in (entries.items() if isinstance(entries, dict) else ()):
        if not isinstance(entry, dict):
            continue
        where = '{}: endpoint {!r}'.format(label, name)
        server_class = entry.get('SERVER_CLASS', name)
        read = _worker_read_keys(endpoints_dir, server_class) if isinstance(server_class, str) else None
        for key in entry:
            if key in _ENDPOINT_KEYS:
                continue
            close = suggestion(key, _ENDPOINT_KEYS)
            if close is not None and key not in (read or ()):
                problems.append('{}: key {!r} is not a gateway key; did you mean {!r}?'.format(where, key, close))
            elif read is not None and key not in read:
                problems.append('{}: key {!r} is not a gateway key, and {} does not read it (not in its _CONFIG, '
                                'no cfg_{}); remove it, or add it to _CONFIG'.format(
                                    where, key, endpoint_file(endpoints_dir, server_class), str(key).lower()))
    return problems


def _worker_read_keys(endpoints_dir, server_class):
    """The config keys the endpoint file shows it reads: its ``_CONFIG``'s, and every key
    named by a ``cfg_<key>`` or a string literal in it; None when the file cannot be read
    (a support process without a file, or a missing one, which is reported on its own)."""
    try:
        with open(endpoint_file(endpoints_dir, server_class), encoding='utf-8') as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return None
    read = set(_worker_config_keys(endpoints_dir, server_class))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            read.add(node.value)
        elif isinstance(node, ast.Attribute) and node.attr.startswith('cfg_'):
            read.add(node.attr[4:].upper())
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith('cfg_'):
            read.add(node.name[4:].upper())
    return read


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


def _reserved_replicas(entry):
    return max(entry.get('REPLICAS', 1), entry.get('MAX_REPLICAS', 1))


def _assign_ports(entries, label, endpoints_dir, gateway_port, default_host, keep_ports=None):
    """Live ports first, in the file's order (as without reloads), then a spare port per
    replica of each spawned endpoint (where a reload starts the new process). ``keep_ports``
    (``{name: (ports, spare_ports)}`` of the config being replaced) keeps a running
    endpoint's ports when its entry still fits them, and keeps new ones off them."""
    keep_ports = keep_ports or {}
    taken = {gateway_port: 'the gateway'}
    for name, entry, where in entries:
        if 'PORT' in entry and entry.get('HOST') != NO_HOST and not entry.get('URLS'):
            port = entry['PORT']
            for p in range(port, port + _reserved_replicas(entry)):
                if p in taken:
                    raise ConfigError("{}: key 'PORT': port {} is already used by {}".format(where, p, taken[p]))
                taken[p] = 'endpoint {!r}'.format(name)
    spawned = [(name, entry) for name, entry, _ in entries if entry.get('HOST') != NO_HOST and not entry.get('URLS')]
    kept = {}
    for name, entry in spawned:
        old = keep_ports.get(name)
        if old and len(old[0]) == _reserved_replicas(entry) and ('PORT' not in entry or old[0][0] == entry['PORT']):
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
            ports[name] = tuple(range(entry['PORT'], entry['PORT'] + _reserved_replicas(entry)))
        else:
            ports[name] = tuple(free_port() for _ in range(_reserved_replicas(entry)))
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
