"""What ``/system_status`` reports: memory and disk measured with psutil (a few
milliseconds of blocking calls), the alerts they raise, and the gateway's start/stop history
in ``<cache>/_data/gw_state_history.json``, in the original project's keys and formats.
"""

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time

import psutil
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .._version import __version__ as LIB_VER

INFO = 'Memory Size is in GB. Total and avail mem may be reported inconsistently in containers.'
MONITORED_PACKAGES = ('twisted', 'klein', 'treq', 'psutil', 'bis_twisted')
LOW_MEMORY_FRACTION = 0.15
LOW_DISK_FRACTION = 0.10
DEFAULT_APP_ID = 'aid_app_bare_metal'


def get_packages():
    """``["name==version", ...]`` of the installed distributions, sorted by name."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata['Name']
        if name:
            found[name.lower()] = '{}=={}'.format(name, dist.version)
    return [found[k] for k in sorted(found)]


_GB = 1024 ** 3
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def _gb(n_bytes):
    return round(n_bytes / _GB, 2)


def _as_pid_list(pids):
    pids = [pids] if pids is None or isinstance(pids, int) else pids
    return [pid for pid in pids if pid is not None]


def _trees_rss(pids, exclude=()):
    """Summed RSS of the processes ``pids`` and their descendants, each counted once (not
    those in ``exclude``), and the pids counted so far. A vanished process counts 0."""
    seen = set(exclude)
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root] + root.children(recursive=True)
        except _GONE:
            continue
        for process in tree:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                total += process.memory_info().rss
            except _GONE:
                pass  # exited between listing and measuring: it holds nothing now
    return total, seen


def memory_gb(pid):
    """RSS in GB of the process ``pid`` and its descendants (0 when it is gone or None)."""
    return _gb(_trees_rss(_as_pid_list(pid))[0])


def _existing_folder(path):
    # disk_usage needs a path that exists; before the first write the cache may not
    path = os.path.abspath(path or '.')
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def monitored_packages(names=MONITORED_PACKAGES):
    """{name: version} of the installed ones among ``names``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == 'bis_twisted':  # run from a checkout, not installed
                versions[name] = LIB_VER
    return versions


def system_status(gateway_pid=None, server_pids=None, server_name=None, support_services=None,
                  cache_dir='.'):
    """The ``SYSTEM_STATUS`` dict: memory in GB (2 decimals), disk of the volume holding
    ``cache_dir``, versions and environment. ``server_pids`` maps a server name to its pid,
    a list of pids (replicas) or None (not running); a server counts its processes and their
    children, a vanished pid counts 0. ``mem_used`` is what the gateway and its servers hold,
    ``mem_sys`` what everything else does (``total - avail - used``, never below 0)."""
    gateway_pid = os.getpid() if gateway_pid is None else gateway_pid
    counted = set()
    mem_servers = {}
    servers_bytes = 0
    for name, pids in (server_pids or {}).items():
        n_bytes, counted = _trees_rss(_as_pid_list(pids), exclude=counted)
        mem_servers[name] = _gb(n_bytes)
        servers_bytes += n_bytes
    # the gateway's own tree, less the servers already counted under their names
    gateway_bytes, _ = _trees_rss([gateway_pid], exclude=counted)

    memory = psutil.virtual_memory()
    used_bytes = gateway_bytes + servers_bytes
    disk = psutil.disk_usage(_existing_folder(cache_dir))
    return {
        'info': INFO,
        'mem_avail': _gb(memory.available),
        'mem_gateway': _gb(gateway_bytes),
        'mem_servers': mem_servers,
        'mem_sys': _gb(max(0, memory.total - memory.available - used_bytes)),
        'mem_total': _gb(memory.total),
        'mem_used': _gb(used_bytes),
        'disk_avail': _gb(disk.free),
        'disk_total': _gb(disk.total),
        'server_name': server_name,
        'system': platform.platform(),
        'py': sys.version.split(' ')[0],
        'monitored_packages': monitored_packages(),
        'system_support_services': dict(support_services or {}),
        'docker': os.environ.get('AID_APP_DOCKER') == 'Yes',
        'app_id': os.environ.get('AID_APP_ID', DEFAULT_APP_ID),
    }


def system_alerts(status):
    """``SYSTEM_ALERTS`` for a ``system_status`` dict: ``LOW_MEMORY`` when available memory is
    under 15 % of the total, ``LOW_DISK`` when free disk is under 10 %; ``{}`` when fine."""
    alerts = {}
    for key, what, fraction in (('LOW_MEMORY', 'mem', LOW_MEMORY_FRACTION),
                                ('LOW_DISK', 'disk', LOW_DISK_FRACTION)):
        avail, total = status.get(what + '_avail'), status.get(what + '_total')
        if isinstance(avail, (int, float)) and isinstance(total, (int, float)) and total > 0 \
                and avail < fraction * total:
            alerts[key] = '{} available: {:.2f} GB of {:.2f} GB ({:.1f} %), under {:.0f} %'.format(
                'memory' if what == 'mem' else 'disk', avail, total, 100.0 * avail / total,
                100 * fraction)
    return alerts


def _wall_text(seconds):
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(seconds))


def _parse_wall_text(text):
    try:
        return time.mktime(time.strptime(text, '%Y-%m-%d %H:%M:%S'))
    except (TypeError, ValueError, OverflowError):
        return None


def hms(seconds):
    """``H:MM:SS`` as the original wrote uptimes; hours keep counting past a day
    (``25:00:05``, not ``1 day, 1:00:05``)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return '{}:{:02d}:{:02d}'.format(hours, minutes, secs)


class StateHistory:
    """The gateway's start/stop history, kept across restarts (the Docker volume holds the
    cache). ``startup()`` and ``shutdown()`` update and save it; ``snapshot()`` is the
    ``SYSTEM_HISTORY`` answer. A missing file starts a fresh history; an unreadable one is
    logged and replaced, never fatal. Each save is atomic: the file holds either the old
    history or the new one."""

    FILE_NAME = 'gw_state_history.json'
    KEYS = ('CURRENT_STARTUP', 'PREVIOUS_STARTUP', 'LAST_SHUTDOWN', 'LAST_RUNTIME_HOURS')
    EVENTS_KEPT = 20  # the latest notes (a rollout rolled back, say) kept in EVENTS

    _log = Logger()

    def __init__(self, path, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = path
        self._clock = clock
        self._history = dict.fromkeys(self.KEYS)
        self._started_at = None
        self._saving = defer.succeed(None)

    @classmethod
    def in_cache(cls, cache_dir, clock=None):
        """The history at its usual place, ``<cache_dir>/_data/gw_state_history.json``."""
        return cls(os.path.join(cache_dir, '_data', cls.FILE_NAME), clock=clock)

    def snapshot(self):
        return dict(self._history)

    def note(self, text):
        """Add a line to the history's ``EVENTS`` (the latest ``EVENTS_KEPT``), saved now."""
        events = list(self._history.get('EVENTS') or [])[-(self.EVENTS_KEPT - 1):]
        events.append({'time': _wall_text(self._clock.seconds()), 'EVENT': text})
        self._history['EVENTS'] = events
        self._save_soon()

    def set_rollouts_under_way(self, rollouts):
        """Keep ``{endpoint: summary}`` of the rollouts under way, for the next start to tell."""
        if rollouts:
            self._history['ROLLOUTS_UNDER_WAY'] = dict(rollouts)
        else:
            self._history.pop('ROLLOUTS_UNDER_WAY', None)
        self._save_soon()

    def take_rollouts_under_way(self):
        """The rollouts the last run had under way when it stopped (forgotten from now on)."""
        rollouts = self._history.pop('ROLLOUTS_UNDER_WAY', None) or {}
        if rollouts:
            self._write()
        return rollouts

    def startup(self):
        """Continue the saved history: the last start becomes ``PREVIOUS_STARTUP``."""
        self._history = self._read()
        self._started_at = self._clock.seconds()
        self._history['PREVIOUS_STARTUP'] = self._history['CURRENT_STARTUP']
        self._history['CURRENT_STARTUP'] = _wall_text(self._started_at)
        self._write()
        return self.snapshot()

    def shutdown(self):
        """Record this stop and how long the gateway ran since ``startup()``."""
        now = self._clock.seconds()
        started_at = self._started_at
        if started_at is None:  # not started by this object: continue the saved history
            self._history = self._read()
            started_at = _parse_wall_text(self._history['CURRENT_STARTUP'])
        self._history['LAST_SHUTDOWN'] = _wall_text(now)
        self._history['LAST_RUNTIME_HOURS'] = (
            None if started_at is None else hms(now - started_at))
        self._write()
        return self.snapshot()

    def _read(self):
        history = dict.fromkeys(self.KEYS)
        try:
            with open(self.path, 'rb') as stream:
                saved = json.loads(stream.read().decode('utf-8'))
        except FileNotFoundError:
            self._log.info('no gateway history at {path} yet; starting a new one', path=self.path)
            return history
        except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._warn_unusable('{}: {}'.format(type(exc).__name__, exc))
            return history
        if not isinstance(saved, dict):
            self._warn_unusable('it holds a JSON {}, not an object'.format(type(saved).__name__))
            return history
        for key in self.KEYS:
            value = saved.get(key)
            if value is None or isinstance(value, str):
                history[key] = value
            else:
                self._log.warn('gateway history {path}: ignoring {key}={value!r} (not a string)',
                               path=self.path, key=key, value=value)
        events = saved.get('EVENTS')
        if isinstance(events, list):
            history['EVENTS'] = [e for e in events if isinstance(e, dict)][-self.EVENTS_KEPT:]
        under_way = saved.get('ROLLOUTS_UNDER_WAY')
        if isinstance(under_way, dict) and under_way:
            history['ROLLOUTS_UNDER_WAY'] = {str(k): str(v) for k, v in under_way.items()}
        return history

    def _warn_unusable(self, reason):
        self._log.warn('gateway history {path} is unreadable ({reason}); starting a new history, '
                       'which replaces it at the next save', path=self.path, reason=reason)

    def _save_soon(self):
        """``_write`` off the reactor thread (a sync can take a while), one save after another
        so that the last one written is the latest; at once on a clock without threads (tests)."""
        payload = self._payload()
        pool = getattr(self._clock, 'getThreadPool', None)
        if pool is None:
            self._write(payload)
            return
        previous = self._saving
        self._saving = d = defer.Deferred()
        previous.addBoth(lambda _: deferToThreadPool(self._clock, pool(), self._write, payload).chainDeferred(d))

    def _payload(self):
        return json.dumps(self._history, indent=2, sort_keys=True).encode('utf-8')

    def _write(self, payload=None):
        """Save atomically: a temporary file in the same folder, synced, then renamed over the
        old one. A failure is logged and the in-memory history kept: a full or read-only
        volume must not stop the gateway."""
        folder = os.path.dirname(os.path.abspath(self.path))
        payload = self._payload() if payload is None else payload
        temp_path = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, temp_path = tempfile.mkstemp(prefix='.' + os.path.basename(self.path) + '.',
                                             suffix='.tmp', dir=folder)
            with os.fdopen(fd, 'wb') as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_path, self.path)
            temp_path = None
            self._sync_folder(folder)
        except OSError as exc:
            self._log.error('could not save gateway history to {path}: {error}; it stays in memory',
                            path=self.path, error=exc)
        finally:
            if temp_path is not None:  # the old file was never touched; drop the partial one
                with contextlib.suppress(OSError):
                    os.unlink(temp_path)

    @staticmethod
    def _sync_folder(folder):
        # the rename survives a power cut once the folder entry is synced; some file systems
        # (and Windows) cannot sync a folder, and the file's own data is synced already
        with contextlib.suppress(OSError, AttributeError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
