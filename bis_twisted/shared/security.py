"""Who may call the admin routes: the gateway's (``/shutdown``, ``/start_server``,
``/kill_server``, ``/update_workers``, ``/support_update_status``) and a model server's
control route (``/update_workers``).

Every admin call, whoever makes it:

- comes from the gateway's own page or from no page at all: an ``Origin`` that is not the
  request's own ``Host``, or ``Sec-Fetch-Site`` other than ``same-origin`` / ``none``, is
  refused (403), so a web page at another origin cannot drive the routes from the user's
  browser;
- sends its body as ``Content-Type: application/json`` (415 otherwise): a page can post
  ``text/plain`` or a form across origins without asking, never JSON.

With ``BIS_ADMIN_TOKEN`` set, every caller, loopback too, sends
``Authorization: Bearer <token>``. Without it, the gateway serves loopback clients whose
``Host`` is a loopback name or address (``localhost``, ``127.0.0.1``, ``[::1]``): a forged
``Host`` is what a DNS-rebinding page sends. A model server (``require_token``) refuses its
control route outright while it has no token. The client address is the TCP peer: behind a
reverse proxy on the same machine every caller looks local, so set a token there.
"""

import hmac
import ipaddress
import os
from urllib.parse import urlsplit

from twisted.logger import Logger

from ..errors import ConfigError, Forbidden, Unauthorized, UnsupportedMediaType
from ..protocol import TOKEN_VARIABLE
from .lograte import RepeatLimiter

MIN_TOKEN_LENGTH = 16
_HOW = "send 'Authorization: Bearer <{}>'".format(TOKEN_VARIABLE)
_OWN_FETCH_SITES = (b'same-origin', b'none')
_LOOPBACK_NAMES = ('localhost', 'localhost.', 'ip6-localhost', 'ip6-loopback')


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x); False for anything
    that is not an IP address (a UNIX socket, a missing peer)."""
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split('%', 1)[0])  # drop an IPv6 zone ("::1%lo")
    except ValueError:
        return False
    mapped = getattr(address, 'ipv4_mapped', None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def is_loopback_host_header(value):
    """True when a ``Host`` header (``name[:port]``, ``[v6][:port]``) names this machine:
    ``localhost`` (and ``*.localhost``, RFC 6761) or a loopback address."""
    try:
        host = urlsplit('//' + value).hostname or ''
    except ValueError:
        return False
    return host in _LOOPBACK_NAMES or host.endswith('.localhost') or is_loopback(host)


def admin_token(value, variable=TOKEN_VARIABLE):
    """The token from its variable's value: surrounding whitespace stripped (a secret file
    ends with a newline), empty -> None; a token shorter than ``MIN_TOKEN_LENGTH`` is a
    ``ConfigError``: a short secret is guessed over the network."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError('{} is {} characters long; use at least {} (e.g. `openssl rand -hex 24`)'.format(
            variable, len(value), MIN_TOKEN_LENGTH))
    return value


def _netloc(value):
    """``host[:port]`` of an ``Origin`` (``scheme://host[:port]``), lower case, or None."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        return None
    return parts.netloc.lower()


class AdminGuard:
    """``check(request)`` returns when the caller may use an admin route and raises
    ``Unauthorized`` (401: no usable credentials), ``Forbidden`` (403: wrong token, a
    cross-origin or rebound browser request, a remote client while no token is set) or
    ``UnsupportedMediaType`` (415: a body that is not JSON) otherwise. Refusals are logged
    with the client and the path, never with a token, the configured one or the one
    presented."""

    _log = Logger()

    def __init__(self, token=None, require_token=False, clock=None):
        # an empty value counts as unset, as `-e BIS_ADMIN_TOKEN=` in Docker would give
        token = admin_token(token)
        self._token = token.encode('utf-8') if token else None
        self._require_token = require_token
        self._repeats = RepeatLimiter(self._log, clock=clock)  # a flood of refusals logs one line a second

    @classmethod
    def from_environ(cls, environ=None, require_token=False):
        return cls((os.environ if environ is None else environ).get(TOKEN_VARIABLE), require_token=require_token)

    @property
    def token_required(self):
        return self._token is not None

    def check(self, request):
        host = getattr(request.getClientAddress(), 'host', None)
        path = (getattr(request, 'path', None) or b'').decode('utf-8', 'replace')
        self._check_browser(request, host, path)
        if self._token is None:
            self._check_without_token(request, host, path)
        else:
            self._check_token(request, host, path)
        if getattr(request, 'method', b'POST') == b'POST':
            content_type = (request.getHeader(b'content-type') or b'').split(b';')[0].strip().lower()
            if content_type != b'application/json':
                raise self._refusal(
                    UnsupportedMediaType, host, path, 'body sent as {!r}'.format(content_type.decode('latin-1')),
                    'admin route {}: send the body as JSON with Content-Type: application/json '
                    '(got {!r})'.format(path, content_type.decode('latin-1') or 'none'))

    def _check_browser(self, request, host, path):
        own = (request.getHeader(b'host') or b'').decode('latin-1').lower()
        origin = request.getHeader(b'origin')
        if origin is not None:
            origin_text = origin.decode('latin-1')
            if not own or _netloc(origin_text) != own:
                raise self._refusal(
                    Forbidden, host, path, 'cross-origin request (Origin {!r})'.format(origin_text[:100]),
                    'admin route {}: refused a request from the page at {!r}: admin routes take '
                    'requests from the gateway\'s own origin only'.format(path, origin_text[:100]))
        fetch_site = request.getHeader(b'sec-fetch-site')
        if fetch_site is not None and fetch_site.lower() not in _OWN_FETCH_SITES:
            raise self._refusal(
                Forbidden, host, path, 'Sec-Fetch-Site {!r}'.format(fetch_site.decode('latin-1')[:40]),
                'admin route {}: refused a request a browser marked Sec-Fetch-Site: {}: admin routes '
                'take requests from the gateway\'s own origin only'.format(path, fetch_site.decode('latin-1')[:40]))

    def _check_without_token(self, request, host, path):
        if self._require_token:
            raise self._refusal(
                Forbidden, host, path, 'no admin token configured',
                'control route {}: this server was started without {}; start it with {} set '
                '(at least {} characters) and {}'.format(path, TOKEN_VARIABLE, TOKEN_VARIABLE,
                                                         MIN_TOKEN_LENGTH, _HOW))
        if not is_loopback(host):
            raise self._refusal(
                Forbidden, host, path, 'remote client and no admin token configured',
                'admin route {}: only local clients are served while {} is not set; call it '
                'from the server itself, or start the gateway with {} set and {}'.format(
                    path, TOKEN_VARIABLE, TOKEN_VARIABLE, _HOW))
        given = request.getHeader(b'host')
        if given is not None and not is_loopback_host_header(given.decode('latin-1')):
            raise self._refusal(
                Forbidden, host, path, 'Host {!r} is not a loopback name'.format(given.decode('latin-1')[:100]),
                'admin route {}: Host {!r} is not localhost or a loopback address; while {} is not '
                'set the admin routes answer only requests addressed to this machine by such a name '
                '(a page that rebinds its DNS name to 127.0.0.1 sends its own)'.format(
                    path, given.decode('latin-1')[:100], TOKEN_VARIABLE))

    def _check_token(self, request, host, path):
        header = request.getHeader(b'authorization')
        parts = (header or b'').split(None, 1)
        presented = parts[1].strip() if len(parts) == 2 else b''
        if not parts or parts[0].lower() != b'bearer' or not presented:
            # RFC 6750: a 401 names the scheme the client should use
            request.setHeader(b'WWW-Authenticate', b'Bearer realm="bis admin"')
            if header is None:
                reason, told = 'no Authorization header', 'no Authorization header'
            elif len(parts) == 1 and parts[0].lower() != b'bearer':
                reason = told = "the Authorization header has the token without 'Bearer ' before it"
            else:
                reason, told = "Authorization is not 'Bearer <token>'", "the Authorization header is not 'Bearer <token>'"
            raise self._refusal(Unauthorized, host, path, reason,
                                'admin route {}: {}; {}'.format(path, told, _HOW))
        if not hmac.compare_digest(presented, self._token):
            raise self._refusal(
                Forbidden, host, path, 'wrong bearer token',
                'admin route {}: the bearer token is wrong; {} with the value the gateway was '
                'started with'.format(path, _HOW))

    def _refusal(self, error_class, host, path, reason, message):
        """Log the refusal (no credentials in it) and return the error to raise."""
        self._repeats.emit('warn', (path, host, reason, error_class.status),
                           'admin route {path} refused for client {client}: {reason} ({status})',
                           path=path, client=host, reason=reason, status=error_class.status,
                           described='admin route {} refused for client {}: {} ({})'.format(
                               path, host, reason, error_class.status))
        return error_class(message)
