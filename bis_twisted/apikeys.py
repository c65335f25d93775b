"""Who may call ``/run``: API keys from the ``API_KEYS`` file, each with the endpoints it may
run and a token bucket (``rate`` requests per second, ``burst`` at once) on the reactor's clock.

The file maps a key's name to ``{"key_sha256": "<hex>", "endpoints": [...] or "*",
"rate": r, "burst": b}``; only the SHA-256 of a key is stored. ``KeyStore.load(path)`` reads
and validates it (``ConfigError`` naming the file, the key's name and the field);
``KeyStore.replace(other)`` swaps in a re-read file while the gateway serves, keeping the
buckets of keys whose limits did not change. A caller sends ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``; refusals are logged with the key's name or "unknown", never a key.
"""

import hashlib
import hmac
import json
import math
import os
import re
import secrets

import attr
from twisted.logger import Logger

from .errors import ConfigError, Forbidden, TooManyRequests, Unauthorized
from .lograte import RepeatLimiter

KEY_HEADER = b'x-api-key'
UNKNOWN = 'unknown'
DEFAULT_RATE = 10.0
DEFAULT_BURST = 20
_HEX64 = re.compile(r'^[0-9a-f]{64}$')
_FIELDS = ('key_sha256', 'endpoints', 'rate', 'burst')


def key_hash(key):
    """The hex SHA-256 of a key (str or bytes), as the file stores it."""
    if isinstance(key, str):
        key = key.encode('utf-8')
    return hashlib.sha256(key).hexdigest()


def new_key():
    """A fresh random key (32 bytes from ``secrets``, URL-safe text)."""
    return 'bis_' + secrets.token_urlsafe(32)


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second of ``clock.seconds()``.
    ``take()`` spends one and returns 0, or returns the seconds until one is there."""

    def __init__(self, rate, burst, clock):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock.seconds()

    def _refill(self):
        now = self._clock.seconds()
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self):
        self._refill()
        if self._tokens >= 1 - 1e-9:  # refills summed in floats fall a hair short of a whole token
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self.rate

    @property
    def tokens(self):
        self._refill()
        return self._tokens


@attr.s(frozen=True)
class ApiKey:
    """One entry of the file: ``endpoints`` is None for every endpoint ("*")."""

    name = attr.ib()
    key_sha256 = attr.ib(repr=False)
    endpoints = attr.ib()
    rate = attr.ib()
    burst = attr.ib()

    def allows(self, endpoint):
        return self.endpoints is None or endpoint in self.endpoints


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_keys(data, label):
    """``{name: ApiKey}`` from the file's decoded JSON, or ConfigError naming the key and field."""
    if not isinstance(data, dict):
        raise ConfigError('{}: the top level must be a JSON object of key names'.format(label))
    keys, hashes = {}, {}
    for name, entry in data.items():
        where = '{}: key {!r}'.format(label, name)
        if not isinstance(entry, dict):
            raise ConfigError('{}: must be an object with key_sha256, endpoints, rate, burst'.format(where))
        unknown = sorted(set(entry) - set(_FIELDS))
        if unknown:
            raise ConfigError('{}: unknown field {!r} (fields: {})'.format(where, unknown[0], ', '.join(_FIELDS)))
        digest = entry.get('key_sha256')
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise ConfigError("{}: field 'key_sha256' must be 64 hex digits (the SHA-256 of the key; "
                              "`bis-gateway key add NAME` writes it), got {!r}".format(where, digest))
        digest = digest.lower()
        if digest in hashes:
            raise ConfigError("{}: field 'key_sha256' is the same as key {!r}'s".format(where, hashes[digest]))
        hashes[digest] = name
        endpoints = entry.get('endpoints', '*')
        if endpoints == '*':
            endpoints = None
        elif isinstance(endpoints, list) and all(isinstance(e, str) and e for e in endpoints):
            endpoints = frozenset(endpoints)
        else:
            raise ConfigError("{}: field 'endpoints' must be \"*\" or a list of endpoint names, got {!r}".format(
                where, endpoints))
        rate = entry.get('rate', DEFAULT_RATE)
        if not _number(rate) or rate <= 0:
            raise ConfigError("{}: field 'rate' must be a number of requests per second > 0, got {!r}".format(
                where, rate))
        burst = entry.get('burst', DEFAULT_BURST)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ConfigError("{}: field 'burst' must be an integer >= 1, got {!r}".format(where, burst))
        keys[name] = ApiKey(name, digest, endpoints, float(rate), burst)
    return keys


def read_keys_file(path):
    """The file's decoded JSON (``{}`` when it does not exist yet, for ``key add``)."""
    try:
        with open(path, encoding='utf-8') as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError('{}: cannot read the API_KEYS file: {}'.format(path, exc.strerror)) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError('{}: not valid JSON: {}'.format(path, exc)) from None


class KeyStore:
    """The keys the gateway accepts and a bucket per key. ``check(request, endpoint)``
    returns the caller's key name or raises 401 / 403 / 429."""

    _log = Logger()

    def __init__(self, keys, path=None, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = path
        self._clock = clock
        self._repeats = RepeatLimiter(self._log, clock=clock)
        self._set(keys, {})

    @classmethod
    def load(cls, path, clock=None):
        data = read_keys_file(path)
        if data is None:
            raise ConfigError('{}: the API_KEYS file does not exist (create it with '
                              '`bis-gateway key add NAME --file {}`)'.format(path, path))
        return cls(parse_keys(data, path), path=path, clock=clock)

    def _set(self, keys, old_buckets):
        self.keys = keys
        self._by_hash = {k.key_sha256.encode('ascii'): k for k in keys.values()}
        buckets = {}
        for name, key in keys.items():
            old = old_buckets.get(name)
            if old is not None and old.rate == key.rate and old.burst == key.burst:
                buckets[name] = old  # a reload does not hand a flooding key a fresh burst
            else:
                buckets[name] = TokenBucket(key.rate, key.burst, self._clock)
        self._buckets = buckets

    def reload(self):
        """Re-read ``path``; on any error (ConfigError) nothing changes. Returns the names."""
        fresh = KeyStore.load(self.path, clock=self._clock)
        self._set(fresh.keys, self._buckets)
        return sorted(self.keys)

    @property
    def names(self):
        return sorted(self.keys)

    @staticmethod
    def presented(request):
        """The key the request carries (bytes), or None."""
        given = request.getHeader(KEY_HEADER)
        if given:
            return given.strip()
        parts = (request.getHeader(b'authorization') or b'').split(None, 1)
        if len(parts) == 2 and parts[0].lower() == b'bearer':
            return parts[1].strip()
        return None

    def identify(self, presented):
        if not presented:
            return None
        digest = hashlib.sha256(presented).hexdigest().encode('ascii')
        for known, key in self._by_hash.items():  # the dict lookup would compare in variable time
            if hmac.compare_digest(known, digest):
                return key
        return None

    def check(self, request, endpoint):
        presented = self.presented(request)
        key = self.identify(presented)
        if key is None:
            if presented:
                reason = 'unknown API key'
                message = 'unknown API key; send a key the gateway\'s API_KEYS file holds'
            else:
                reason = 'no API key'
                message = "/run needs an API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
            request.setHeader(b'WWW-Authenticate', b'Bearer realm="bis run"')
            raise self._refusal(Unauthorized, UNKNOWN, endpoint, reason, message)
        if not key.allows(endpoint):
            raise self._refusal(Forbidden, key.name, endpoint, 'endpoint not allowed for this key',
                                'API key {!r} may not run {!r}; it may run: {}'.format(
                                    key.name, endpoint, ', '.join(sorted(key.endpoints)) or 'nothing'))
        wait = self._buckets[key.name].take()
        if wait:
            seconds = max(1, math.ceil(wait))
            error = self._refusal(TooManyRequests, key.name, endpoint, 'over its rate',
                                  'API key {!r} is over its rate of {:g} requests/s (burst {}); retry '
                                  'in {} s'.format(key.name, key.rate, key.burst, seconds))
            error.retry_after = seconds
            raise error
        return key.name

    def _refusal(self, error_class, name, endpoint, reason, message):
        status = error_class.status
        self._repeats.emit('warn', (name, endpoint, status, reason),
                           '/run to {endpoint} refused for API key {name}: {reason} ({status})',
                           endpoint=endpoint, name=name, reason=reason, status=status,
                           described='/run to {} refused for API key {}: {} ({})'.format(
                               endpoint, name, reason, status))
        error = error_class(message)
        error.key_name = name  # what /metrics counts the refusal under
        return error


def add_key(path, name, endpoints='*', rate=DEFAULT_RATE, burst=DEFAULT_BURST):
    """Generate a key for ``name``, write its hash to ``path`` (created if missing) and return
    the key; ConfigError when the name is taken or the file is invalid."""
    data = read_keys_file(path)
    data = {} if data is None else data
    parse_keys(data, path)  # never add to a file the gateway would refuse
    if name in data:
        raise ConfigError('{}: key {!r} already exists; pick another name (or remove it from the '
                          'file to replace it)'.format(path, name))
    key = new_key()
    data[name] = {'key_sha256': key_hash(key), 'endpoints': endpoints, 'rate': rate, 'burst': burst}
    parse_keys(data, path)
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as fh:
        json.dump(data, fh, indent=2)
        fh.write('\n')
    os.replace(tmp, path)  # a gateway reloading meanwhile reads the old file or the new one
    return key
