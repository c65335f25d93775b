"""``ReloadWatcher``: ``bis-gateway --reload`` (development): polls the config file and the
endpoint files once a second (a ``TimerService``; no new dependency) and reloads what changed.

A changed config file is a ``/reload_config``; a changed endpoint file reloads the servers
whose ``SERVER_CLASS`` it is (``/reload_server``); another changed ``.py`` under the endpoints
folder (a helper module they import) reloads every spawned server. One log line per reload;
a reload that fails (bad config, code that does not load) is logged and the old processes keep
serving. Changes seen while a reload runs are taken on the next round.
"""

import os

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger


def snapshot(config_path, endpoints_dir):
    """``{path: (mtime_ns, size)}`` of the config file and every ``.py`` under the endpoints folder."""
    found = {}
    paths = [config_path]
    for root, dirs, files in os.walk(endpoints_dir):
        dirs[:] = [d for d in dirs if d != '__pycache__' and not d.startswith('.')]
        paths += [os.path.join(root, f) for f in files if f.endswith('.py')]
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


class ReloadWatcher(TimerService):
    interval = 1.0

    _log = Logger()

    def __init__(self, service, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        TimerService.__init__(self, self.interval, self.tick)
        self.clock = reactor
        self.service = service
        self._config_path = os.path.abspath(service.options.config)
        self._endpoints_dir = service.endpoints_dir
        self._seen = snapshot(self._config_path, self._endpoints_dir)
        self.reloads = 0

    async def tick(self):
        # the LoopingCall waits for this round before the next: no reload overlaps another
        try:
            await self.check()
        except Exception:
            self._log.failure('reload watcher round failed')

    async def check(self):
        now = snapshot(self._config_path, self._endpoints_dir)
        changed = {p for p in set(now) | set(self._seen) if now.get(p) != self._seen.get(p)}
        self._seen = now
        if not changed:
            return
        done = set()  # servers the config reload started afresh already
        if self._config_path in changed:
            changed.discard(self._config_path)
            summary = await self._reload('config', self.service.reload_config)
            for key in ('ADDED', 'RELOADED', 'REMOVED'):
                done.update((summary or {}).get(key, ()))
        fleet = self.service.fleet
        spawned = [s for s in fleet.servers.values() if s.config.is_spawned and s.name not in done]
        own = {os.path.join(self._endpoints_dir, s.config.server_class + '.py'): s for s in spawned}
        if any(path not in own for path in changed):
            targets = spawned  # a helper module: any server may import it
        else:
            targets = [s for s in spawned if any(own.get(p) is s for p in changed)]
        for server in targets:
            if server.name in fleet.servers and not fleet.is_stopped(server):
                await self._reload('server {}'.format(server.name),
                                   lambda server=server: defer.Deferred.fromCoroutine(fleet.reload(server)))

    async def _reload(self, what, action):
        self.reloads += 1
        try:
            result = await action()
        except Exception as exc:
            message = getattr(exc, 'message', None) or str(exc)
            self._log.warn('--reload: {what} not reloaded: {err}', what=what, err=message)
            return None
        self._log.info('--reload: {what} reloaded', what=what)
        return result
