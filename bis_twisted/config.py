"""Load and validate ``config_gateway.txt``; nothing else.

Everything is checked before anything starts. A config that cannot be used raises
``ConfigError`` with one line naming the file, the endpoint and the key, e.g.
``config_gateway.txt: endpoint 'demo': key 'NR_WORKERS' must be an integer >= 1, got 'two'``.
"""

import ast
import json
import os

import attr

from .errors import ConfigError
from .loader import endpoint_file, expected_class_name

NO_HOST = 'NO_HOST'
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_QUEUE = 1024
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_MAX_BODY_MB = 8
DEFAULT_MAX_ANSWER_MB = 64


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
    http_limits = attr.ib(factory=dict)  # the HTTP_LIMIT_KEYS the file sets
    max_answer_mb = attr.ib(default=DEFAULT_MAX_ANSWER_MB)  # a model server's answer over it: 502

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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# key -> (check, what it must be)
_ENDPOINT_KEYS = {
    'NR_WORKERS': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
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
    'MAX_BODY_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
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
    # the HTTP limits (limits.py)
    'HEAD_TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'BODY_TIMEOUT': (lambda v: _is_number(v) and v > 0, 'a number of seconds > 0'),
    'MAX_CONNECTIONS': (lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    'MAX_BODIES_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
    'MAX_ANSWER_MB': (lambda v: _is_number(v) and v > 0, 'a number of MiB > 0'),
}
HTTP_LIMIT_KEYS = ('HEAD_TIMEOUT', 'BODY_TIMEOUT', 'MAX_CONNECTIONS', 'MAX_BODIES_MB')


def load_config(path, endpoints_dir='endpoints', gateway_port=5002, default_host='127.0.0.1'):
    """Read ``path`` and return a ``GatewayConfig`` with ports assigned, or raise ConfigError."""
    label = path
    try:
        with open(path, encoding='utf-8') as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError('{}: cannot read the config file: {}'.format(label, exc.strerror)) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError('{}: not valid JSON: {}'.format(label, exc)) from None
    return parse_config(data, label, endpoints_dir, gateway_port, default_host)


def parse_config(data, label, endpoints_dir='endpoints', gateway_port=5002, default_host='127.0.0.1'):
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
        entries.append((name, entry, where))

    endpoints = _assign_ports(entries, label, endpoints_dir, gateway_port, default_host)
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
                         metrics=data.get('METRICS', True),
                         http_limits={k: data[k] for k in HTTP_LIMIT_KEYS if k in data},
                         max_answer_mb=data.get('MAX_ANSWER_MB', DEFAULT_MAX_ANSWER_MB))


def _check_endpoint_file(where, endpoints_dir, server_class, required):
    path = endpoint_file(endpoints_dir, server_class)
    if not os.path.isfile(path):
        if required:
            raise ConfigError("{}: key 'SERVER_CLASS': endpoint file {} does not exist".format(where, path))
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
            raise ConfigError("{}: key 'SERVER_CLASS': {} has no class {} (found: {})".format(
                where, path, expected_class_name(server_class), ', '.join(classes) or 'none'))
    return True


def _assign_ports(entries, label, endpoints_dir, gateway_port, default_host):
    taken = {gateway_port: 'the gateway'}
    for name, entry, where in entries:
        if 'PORT' in entry and entry.get('HOST') != NO_HOST and not entry.get('URLS'):
            port = entry['PORT']
            replicas = entry.get('REPLICAS', 1)
            for p in range(port, port + replicas):
                if p in taken:
                    raise ConfigError("{}: key 'PORT': port {} is already used by {}".format(where, p, taken[p]))
                taken[p] = 'endpoint {!r}'.format(name)

    next_port = [gateway_port + 1]

    def free_port():
        while next_port[0] in taken:
            next_port[0] += 1
        port = next_port[0]
        taken[port] = True
        return port

    # enabled servers take the low ports, so the README's docker -p 5002-5010 range covers them
    ordered = sorted(entries, key=lambda item: bool(item[1].get('DISABLED', False)))
    ports = {}
    for name, entry, where in ordered:
        if entry.get('HOST') == NO_HOST or entry.get('URLS'):
            ports[name] = ()
        elif 'PORT' in entry:
            ports[name] = tuple(range(entry['PORT'], entry['PORT'] + entry.get('REPLICAS', 1)))
        else:
            ports[name] = tuple(free_port() for _ in range(entry.get('REPLICAS', 1)))

    endpoints = []
    for name, entry, where in entries:
        host = entry.get('HOST', default_host)
        server_class = entry.get('SERVER_CLASS', name)
        support = host == NO_HOST
        remote = bool(entry.get('URLS'))
        has_file = _check_endpoint_file(where, endpoints_dir, server_class, required=not (support or remote))
        endpoints.append(EndpointConfig(
            name=name, server_class=server_class, entry=dict(entry), host=host, ports=ports[name],
            nr_workers=entry.get('NR_WORKERS', 1), description=entry.get('DESCRIPTION', ''),
            disabled=entry.get('DISABLED', False), timeout=float(entry.get('TIMEOUT', DEFAULT_TIMEOUT)),
            max_queue=entry.get('MAX_QUEUE', DEFAULT_MAX_QUEUE), replicas=entry.get('REPLICAS', 1),
            urls=tuple(u.rstrip('/') for u in entry.get('URLS', ())),
            ping_interval=float(entry.get('PING_INTERVAL', DEFAULT_PING_INTERVAL)), has_file=has_file))
    return endpoints
