"""Who may call the gateway's admin routes (``/shutdown``, ``/start_server``,
``/kill_server``, ``/update_workers``).

With ``BIS_ADMIN_TOKEN`` set, every caller, loopback too, sends
``Authorization: Bearer <token>``; without it, only loopback clients are served. The client
address is the TCP peer: behind a reverse proxy on the same machine every caller looks local,
so set a token there.
"""

import hmac
import ipaddress
import os

from twisted.logger import Logger

from .errors import Forbidden, Unauthorized

TOKEN_VARIABLE = 'BIS_ADMIN_TOKEN'
_HOW = "send 'Authorization: Bearer <{}>'".format(TOKEN_VARIABLE)


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


class AdminGuard:
    """``check(request)`` returns when the caller may use an admin route and raises
    ``Unauthorized`` (401: no usable credentials) or ``Forbidden`` (403: wrong token, or a
    remote client while no token is set) otherwise. Refusals are logged with the client and
    the path, never with a token, the configured one or the one presented."""

    _log = Logger()

    def __init__(self, token=None):
        # an empty value counts as unset, as `-e BIS_ADMIN_TOKEN=` in Docker would give
        self._token = token.encode('utf-8') if token else None

    @classmethod
    def from_environ(cls, environ=None):
        return cls((os.environ if environ is None else environ).get(TOKEN_VARIABLE))

    @property
    def token_required(self):
        return self._token is not None

    def check(self, request):
        host = getattr(request.getClientAddress(), 'host', None)
        path = (getattr(request, 'path', None) or b'').decode('utf-8', 'replace')
        if self._token is None:
            if is_loopback(host):
                return
            raise self._refusal(
                Forbidden, host, path, 'remote client and no admin token configured',
                'admin route {}: only local clients are served while {} is not set; call it '
                'from the server itself, or start the gateway with {} set and {}'.format(
                    path, TOKEN_VARIABLE, TOKEN_VARIABLE, _HOW))
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
        self._log.warn('admin route {path} refused for client {client}: {reason} ({status})',
                       path=path, client=host, reason=reason, status=error_class.status)
        return error_class(message)
