"""``ConfigReloader``: the config file read again and put in force while the gateway serves.

It owns what a reload swaps: the fleet's servers (``Fleet.apply_config``), the API key store
the routes check keys against (the buckets of unchanged keys kept), the access log's switch,
and which config is in force. A file that cannot be used changes nothing: the reload fails
with ``BadRequest`` and its one-line error. One reload at a time: a second waits for the
first. ``POST /reload_config``, ``--reload`` and SIGHUP all come here.
"""

import signal

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import BadRequest, ConfigError
from .apikeys import KeyStore, read_keys_file
from .config import load_config


class ConfigReloader:
    """Reloads ``path`` (its endpoint files in ``endpoints_dir``, the gateway on
    ``gateway_port``) over ``config``, the one in force, for ``fleet`` and ``gateway`` (the
    routes: their key store and what they show) and ``access_log``; ``after`` are called
    (async) once a reload is in force; ``held()`` names more ports no new endpoint may take
    (``{name: (ports, spare ports)}``: a rollout's candidates)."""

    _log = Logger()

    def __init__(self, path, endpoints_dir, gateway_port, config, fleet, gateway, access_log, reactor, after=(),
                 held=dict):
        self.path = path
        self.endpoints_dir = endpoints_dir
        self.gateway_port = gateway_port
        self.config = config
        self._fleet = fleet
        self._gateway = gateway
        self._access_log = access_log
        self._reactor = reactor
        self._after = list(after)
        self._held = held
        self._under_way = None  # the reload under way: a second one waits for it

    def reload(self):
        """Read and validate the config file again and apply it; fires with ``{action: [names]}``,
        or fails with ``BadRequest`` (the one-line error) when the file cannot be used, and
        then nothing changes."""
        previous = self._under_way or defer.succeed(None)
        d = defer.Deferred()
        previous.addBoth(lambda _: defer.Deferred.fromCoroutine(self._reload()).chainDeferred(d))
        self._under_way = d
        return d

    async def _reload(self):
        keep = dict(self._held(), **{e.name: (e.ports, e.spare_ports) for e in self.config.endpoints if e.is_spawned})
        try:
            config = load_config(self.path, self.endpoints_dir, self.gateway_port, keep_ports=keep)
            # the API_KEYS file too: an invalid one refuses the whole reload
            keys = read_keys_file(config.api_keys) if config.api_keys else None
        except ConfigError as exc:
            self._log.warn('config reload refused, nothing changed: {err}', err=exc)
            raise BadRequest(str(exc)) from None
        for warning in config.warnings:
            self._log.warn('{warning}', warning=warning)
        done = await self._fleet.apply_config(config)
        self._swap_keys(config, keys)
        self.config = config
        self._gateway.refresh()
        self._access_log.enabled = config.access_log
        for after in self._after:
            await after()
        self._log.info('config reloaded from {path}: {summary}', path=self.path, summary='; '.join(
            '{} {}'.format(k.lower(), ', '.join(v)) for k, v in done.items() if v and k != 'UNCHANGED') or 'no change')
        for name, error in done['FAILED'].items():
            self._log.warn('config reload: {error}', error=error)
        return done

    def _swap_keys(self, config, keys):
        if keys is None:
            self._gateway.keys = None
        elif self._gateway.keys is None:
            self._gateway.keys = KeyStore(config.api_keys, self._reactor)
        else:
            self._gateway.keys.reload(config.api_keys)  # the buckets of unchanged keys are kept

    def listen_for_sighup(self):
        """SIGHUP reloads the config (from the main thread only: a test's reactor in a thread
        leaves the signal alone)."""
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:
            pass

    def _on_sighup(self, signum, frame):
        self._reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self):
        self._log.info('SIGHUP: reloading the config')
        d = self.reload()
        d.addErrback(lambda f: self._log.warn('config reload on SIGHUP failed: {err}', err=f.getErrorMessage()))
