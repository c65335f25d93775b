"""``ReloadWatcher``: ``bis-gateway --reload`` (development): polls the config file and the
endpoint files once a second (a ``TimerService``; no new dependency) and reloads what changed.

A changed config file is a ``/reload_config``; a changed endpoint file reloads the servers
whose ``SERVER_CLASS`` it is (``/reload_server``); another changed ``.py`` under the endpoints
folder (a helper module) reloads the servers whose files import it, directly or through other
files of the folder (read from their syntax trees); a new file nobody imports reloads
nothing. One log line per reload;
a reload that fails (bad config, code that does not load) is logged and the old processes keep
serving. Changes seen while a reload runs are taken on the next round.
"""

import ast
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


def _module_paths(endpoints_dir, name):
    """The files under ``endpoints_dir`` that ``import name`` may load."""
    base = os.path.join(endpoints_dir, *name.split('.'))
    return [base + '.py', os.path.join(base, '__init__.py')]


def imported_files(path, endpoints_dir, seen=None):
    """The files of the endpoints folder ``path`` imports, directly or through another of
    them (each file's imports read from its syntax tree; a file that cannot be read imports
    nothing here)."""
    seen = set() if seen is None else seen
    try:
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return seen
    here = os.path.dirname(path)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing file's folder
                folder = here
                for _ in range(node.level - 1):
                    folder = os.path.dirname(folder)
                prefix = os.path.relpath(folder, endpoints_dir).replace(os.sep, '.')
                prefix = '' if prefix == '.' else prefix + '.'
            else:
                prefix = ''
            module = prefix + (node.module or '')
            names = [module.rstrip('.')] if node.module else []
            names += ['{}{}'.format(prefix if not node.module else module + '.', alias.name) for alias in node.names]
        for name in names:
            if not name:
                continue
            for candidate in _module_paths(endpoints_dir, name):
                if candidate not in seen:
                    seen.add(candidate)
                    if os.path.exists(candidate):
                        imported_files(candidate, endpoints_dir, seen)
    return seen


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
        targets = []
        for server in spawned:
            own = os.path.join(self._endpoints_dir, server.config.server_class + '.py')
            if own in changed or changed & imported_files(own, self._endpoints_dir):
                targets.append(server)
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
