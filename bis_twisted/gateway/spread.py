"""A remote server's host name, spread over every address it resolves to.

A ``URLS`` entry names a host. In Kubernetes that is a headless Service, whose name the
cluster DNS answers with the address of every ready pod. ``AddressSpreader`` resolves each
such host to all its addresses every ``URLS_REFRESH`` seconds (default 10) and keeps one
target per address, so that routing's least-busy rule spreads requests over the pods, and a
pod that appears gets its share after the next resolution. (Behind a ClusterIP Service
kube-proxy balances per connection, and pooled connections stay with the pods that were there
first.) A host that does not resolve keeps the targets it had; an address that goes away stops
getting requests and its target is dropped once its requests have answered.

Not spread: ``https`` URLs (the certificate names the host, not an address) and URLs that
name an address already.
"""

import ipaddress
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from ..protocol import DEFAULT_EXECUTION_PATH
from .topology import Target

DEFAULT_REFRESH = 10.0  # seconds between two resolutions of a URLS host
REFRESH_KEY = 'URLS_REFRESH'


def in_turn(server):
    """``server``'s targets, starting one further at each call: on a least-busy tie the
    addresses take turns instead of the first one taking every request."""
    targets = [t for t in server.targets if t.active]
    if not targets:
        return targets
    turn = server.turns % len(targets)
    server.turns += 1
    return targets[turn:] + targets[:turn]


def spreadable(url):
    """Whether ``url``'s host is a name to resolve (http, not an address already)."""
    parts = urlsplit(url)
    if parts.scheme != 'http' or not parts.hostname:
        return False
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        return True
    return False


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses of one ``resolveHostName``, each once, in the order given."""

    def __init__(self):
        self.found = []
        self.done = defer.Deferred()

    def resolutionBegan(self, resolution):  # noqa: N802 - the interface's name
        pass

    def addressResolved(self, address):  # noqa: N802
        if address.host not in self.found:
            self.found.append(address.host)

    def resolutionComplete(self):  # noqa: N802
        self.done.callback(self.found)


def resolve_all(resolver, host, port=0):
    """A Deferred list of every address ``host`` resolves to (an ``IHostnameResolver``)."""
    receiver = _Addresses()
    resolver.resolveHostName(receiver, host, port)
    return receiver.done


class AddressTarget(Target):
    """A target made for one address of a ``URLS`` host."""

    def __init__(self, server, index, url, address, execution_path):
        parts = urlsplit(url)
        host = '[{}]'.format(address) if ':' in address else address
        base = '{}://{}:{}'.format(parts.scheme, host, parts.port or 80)
        super().__init__(server, index, base, None, execution_path)
        self.origin_url = url
        self.address = address


def _origin_base(url):
    parts = urlsplit(url)
    return '{}://{}'.format(parts.scheme, parts.netloc)


def apply_addresses(server, url, addresses):
    """Make ``server``'s targets for ``url`` the given addresses: new ones added, gone ones
    out of the rotation (and dropped when idle), the host name's own target out of it while
    any address is known. Returns ``(added, gone)`` address lists."""
    mine = {t.address: t for t in server.targets if isinstance(t, AddressTarget) and t.origin_url == url}
    origin = _origin_base(url)
    origins = [t for t in server.targets if type(t) is Target and t.child_name is None and t.base_url == origin]
    execution_path = origins[0].execution_path if origins else (urlsplit(url).path or DEFAULT_EXECUTION_PATH)
    added = [a for a in addresses if a not in mine]
    gone = [a for a, t in mine.items() if a not in addresses and t.active]
    next_index = max((t.index for t in server.targets), default=-1) + 1
    for offset, address in enumerate(added):
        server.targets.append(AddressTarget(server, next_index + offset, url, address, execution_path))
    for address, target in mine.items():
        target.active = address in addresses
    server.targets[:] = [t for t in server.targets
                         if not (isinstance(t, AddressTarget) and not t.active and t.in_flight == 0)]
    for target in origins:
        target.active = not addresses
    return added, gone


class AddressSpreader(Service):
    """Resolves every spreadable ``URLS`` host when due (a ``LoopingCall`` every ``tick``
    seconds) and applies the addresses to its server."""

    tick = 1.0             # seconds between two looks at what is due
    resolve_timeout = 5.0  # seconds one resolution may take

    _log = Logger()

    def __init__(self, fleet, reactor=None, resolver=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._fleet = fleet
        self._resolver = resolver  # None: the reactor's own (getaddrinfo in a thread)
        self._due = {}  # (server name, url) -> when to resolve it next
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self.refresh()))
        self._loop.clock = self._reactor
        self._loop.start(self.tick, now=True).addErrback(
            lambda failure: self._log.failure('URLS address refresh stopped', failure))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.succeed(None)

    async def refresh(self, force=False):
        """Resolve the hosts that are due (all with ``force``); never raises."""
        now = self._reactor.seconds()
        due = []
        for server in list(self._fleet.servers.values()):
            if not server.config.is_remote:
                continue
            interval = server.config.entry.get(REFRESH_KEY, DEFAULT_REFRESH)
            for url in server.config.urls:
                if not spreadable(url):
                    continue
                key = (server.name, url)
                fresh = not any(isinstance(t, AddressTarget) and t.origin_url == url for t in server.targets)
                if force or fresh or self._due.get(key, 0.0) <= now:
                    self._due[key] = now + interval
                    due.append((server, url))
        await defer.gatherResults([defer.Deferred.fromCoroutine(self._refresh_one(s, u)) for s, u in due])

    async def _refresh_one(self, server, url):
        host = urlsplit(url).hostname
        try:
            resolving = resolve_all(self._resolver or self._reactor.nameResolver, host, urlsplit(url).port or 80)
            resolving.addTimeout(self.resolve_timeout, self._reactor)
            addresses = await resolving
        except Exception as exc:  # a DNS that fails or hangs: keep the targets as they are
            self._log.warn('server {endpoint}: cannot resolve {host} ({err}); keeping its addresses',
                           endpoint=server.name, host=host, err=exc)
            return
        if not addresses:
            self._log.warn('server {endpoint}: {host} resolves to no address now; keeping its addresses',
                           endpoint=server.name, host=host)
            return
        added, gone = apply_addresses(server, url, addresses)
        if added or gone:
            self._log.info('server {endpoint}: {host} is now {addresses} (added {added}, gone {gone})',
                           endpoint=server.name, host=host, addresses=', '.join(addresses),
                           added=', '.join(added) or 'none', gone=', '.join(gone) or 'none')
