"""API keys for ``/run``: who may call which endpoint, and how often.

``"API_KEYS": "api_keys.json"`` at the top of the config names a JSON file (relative to the
config file's folder; the file may hold the keys' rights, so the config holds its name only)::

    {"team-a": {"key_sha256": "<hex>", "endpoints": ["iris_classifier"], "rate": 5, "burst": 10},
     "ops":    {"key_sha256": "<hex>", "endpoints": "*"}}

Keys are stored as their SHA-256 only (``bis-gateway key add NAME`` makes one, prints it
once and writes its hash). A caller sends ``X-API-Key: <key>`` or ``Authorization: Bearer
<key>``. ``rate`` (requests per second) and ``burst`` make a token bucket per key on the
reactor's clock; without ``rate`` a key is not limited. A key never opens an admin route:
the admin token is another secret with its own rule (``security.py``).
"""

import hashlib
import json
import math
import os
import secrets

import attr

from ..errors import ConfigError, Forbidden, TooManyRequests, Unauthorized
from .config import read_json_file

KEY_HEADER = b'X-API-Key'
ALL_ENDPOINTS = '*'


def hash_key(key):
    return hashlib.sha256(key.encode('utf-8')).hexdigest()


def new_key():
    """A random key: 32 bytes, URL-safe text."""
    return 'bis_' + secrets.token_urlsafe(32)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take()`` spends one."""

    def __init__(self, rate, burst, clock):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock.seconds()

    def _refill(self):
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self):
        """``0`` when a token was spent, else the seconds until one is there."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0
        return (1 - self._tokens) / self.rate


@attr.s(frozen=True)
class ApiKey:
    name = attr.ib()
    key_sha256 = attr.ib(repr=False)
    endpoints = attr.ib()  # ALL_ENDPOINTS or a frozenset of names
    rate = attr.ib(default=None)
    burst = attr.ib(default=None)

    def allows(self, endpoint):
        return self.endpoints == ALL_ENDPOINTS or endpoint in self.endpoints


def parse_keys(data, label):
    """``{name: ApiKey}`` from the file's JSON, or ConfigError naming the file, key and field."""
    if not isinstance(data, dict):
        raise ConfigError('{}: must be a JSON object of {{name: {{"key_sha256", "endpoints", ...}}}}'.format(label))
    keys = {}
    seen = {}
    for name, entry in data.items():
        where = '{}: key {!r}'.format(label, name)
        if not isinstance(entry, dict):
            raise ConfigError('{}: must be an object, got {!r}'.format(where, type(entry).__name__))
        digest = entry.get('key_sha256')
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in '0123456789abcdef' for c in digest.lower())):
            raise ConfigError("{}: 'key_sha256' must be the 64 hex digits of the key's SHA-256".format(where))
        digest = digest.lower()
        if digest in seen:
            raise ConfigError('{}: the same key as {!r}'.format(where, seen[digest]))
        seen[digest] = name
        endpoints = entry.get('endpoints', ALL_ENDPOINTS)
        if endpoints != ALL_ENDPOINTS:
            if not (isinstance(endpoints, list) and all(isinstance(e, str) for e in endpoints)):
                raise ConfigError("{}: 'endpoints' must be \"*\" or a list of endpoint names".format(where))
            endpoints = frozenset(endpoints)
        rate, burst = entry.get('rate'), entry.get('burst')
        for field, value in (('rate', rate), ('burst', burst)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0 or math.isinf(value)):
                raise ConfigError("{}: {!r} must be a number > 0".format(where, field))
        if burst is not None and rate is None:
            raise ConfigError("{}: 'burst' needs a 'rate'".format(where))
        if rate is not None and burst is None:
            burst = max(1.0, float(rate))
        keys[name] = ApiKey(name=name, key_sha256=digest, endpoints=endpoints, rate=rate, burst=burst)
    return keys


def read_keys_file(path):
    return parse_keys(read_json_file(path, 'the API_KEYS file'), path)


class KeyStore:
    """The keys the gateway admits, replaceable at run time (``reload``) without losing the
    buckets of keys whose limits did not change."""

    def __init__(self, path, clock):
        self.path = path
        self._clock = clock
        self._keys = {}
        self._by_digest = {}
        self._buckets = {}
        self.reload()

    def reload(self, path=None):
        """Read the file again (or ``path``); an invalid file raises ConfigError and changes
        nothing. Returns the number of keys."""
        keys = read_keys_file(path or self.path)
        buckets = {}
        for name, key in keys.items():
            old = self._keys.get(name)
            if key.rate is not None:
                if old is not None and (old.rate, old.burst) == (key.rate, key.burst) and name in self._buckets:
                    buckets[name] = self._buckets[name]
                else:
                    buckets[name] = TokenBucket(key.rate, key.burst, self._clock)
        self.path = path or self.path
        self._keys = keys
        self._by_digest = {k.key_sha256: k for k in keys.values()}
        self._buckets = buckets
        return len(keys)

    @property
    def names(self):
        return sorted(self._keys)

    def identify(self, request):
        """The ``ApiKey`` the request presents, or Unauthorized (401)."""
        presented = request.getHeader(KEY_HEADER)
        if presented is None:
            authorization = request.getHeader(b'Authorization') or b''
            scheme, _, value = authorization.partition(b' ')
            if scheme.lower() == b'bearer' and value.strip():
                presented = value.strip()
        if presented is None:
            raise _named(Unauthorized('an API key is required: send X-API-Key: <key> (or Authorization: Bearer '
                                      '<key>)'), 'unknown')
        key = self._by_digest.get(hashlib.sha256(presented.strip()).hexdigest())
        if key is None:
            raise _named(Unauthorized('unknown API key'), 'unknown')
        return key

    def admit(self, key, endpoint):
        """Forbidden (403) when the key may not call ``endpoint``; TooManyRequests (429,
        with ``retry_after``) when it is over its rate."""
        if not key.allows(endpoint):
            raise _named(Forbidden('API key {!r} may not call {!r}'.format(key.name, endpoint)), key.name)
        bucket = self._buckets.get(key.name)
        if bucket is not None:
            wait = bucket.take()
            if wait:
                error = TooManyRequests('API key {!r} is over its rate of {:g} requests/s (burst {:g}); retry in '
                                        '{:.2f}s'.format(key.name, key.rate, key.burst, wait))
                error.retry_after = max(1, math.ceil(wait))
                raise _named(error, key.name)


def _named(error, key_name):
    # for the log line and the metrics (the key's name, never the key); not in the answer
    error.key_name = key_name
    return error


def add_key(path, name, endpoints=ALL_ENDPOINTS, rate=None, burst=None):
    """Add a new random key ``name`` to the file at ``path`` (made if missing, 0600), write
    its hash only, and return the key (shown once, kept nowhere)."""
    data = {}
    if os.path.exists(path):
        data = read_json_file(path, 'the API_KEYS file')
        parse_keys(data, path)
    if name in data:
        raise ConfigError('{}: a key named {!r} exists already; pick another name (rotate: add a new key, '
                          'give it to the caller, then remove the old entry and reload)'.format(path, name))
    key = new_key()
    entry = {'key_sha256': hash_key(key), 'endpoints': endpoints}
    if rate is not None:
        entry['rate'] = rate
    if burst is not None:
        entry['burst'] = burst
    data[name] = entry
    parse_keys(data, path)  # what is written can be read
    tmp = '{}.tmp-{}'.format(path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as fh:
        json.dump(data, fh, indent=2)
        fh.write('\n')
    os.replace(tmp, path)
    return key
