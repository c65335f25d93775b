"""``PidFiles``: a pid file per child in the cache folder, so that the next gateway can end a
child that outlived this one (a child stopped with SIGSTOP when its gateway was killed keeps
its port). The cache folder's lock (``cachelock``) makes this gateway the only one using them.
"""

import os
import signal

import psutil
from twisted.logger import Logger

from ..protocol import MODEL_SERVER_MODULE


class PidFiles:
    """``<pid_dir>/<name>.pid`` per child; without a ``pid_dir``, nothing is written."""

    _log = Logger()

    def __init__(self, pid_dir, killpg):
        self._pid_dir = pid_dir
        self._killpg = killpg

    def _path(self, name):
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
        return os.path.join(self._pid_dir, safe + '.pid')

    def write(self, name, pid):
        if not self._pid_dir or pid is None:
            return
        try:
            os.makedirs(self._pid_dir, exist_ok=True)
            with open(self._path(name), 'w', encoding='ascii') as fh:
                fh.write('{}\n'.format(pid))
        except OSError as exc:
            self._log.warn('server {name}: cannot write its pid file: {err}', name=name, err=exc)

    def remove(self, name):
        if self._pid_dir:
            try:
                os.remove(self._path(name))
            except OSError:
                pass

    def end_leftovers(self, names):
        """End the children of ``names`` a previous gateway with this cache left running. A
        pid file's process is ours only if it runs the model server under the same name."""
        if not self._pid_dir:
            return
        for name in names:
            try:
                with open(self._path(name), encoding='ascii') as fh:
                    pid = int(fh.read().strip())
            except (OSError, ValueError):
                continue
            try:
                process = psutil.Process(pid)
                cmdline = process.cmdline()
                owner = _running_gateway(process.parent())
            except (psutil.Error, OSError):
                cmdline, owner = [], None
            if owner is not None and is_child_command(cmdline, name):
                # the cache lock keeps a second gateway off this folder, unless its lock file
                # was removed by hand: the child of a running gateway is never a leftover
                self._log.warn('server {name} (pid {pid}) belongs to another running gateway (pid {owner}) that '
                               'uses this cache folder; left alone: give each gateway a cache of its own (--cache)',
                               name=name, pid=pid, owner=owner)
                continue
            if is_child_command(cmdline, name) and pid != os.getpid():
                self._log.warn('ending server {name} (pid {pid}) left running by a previous gateway',
                               name=name, pid=pid)
                for target in (lambda s: self._killpg(pid, s), lambda s: os.kill(pid, s)):
                    try:
                        target(signal.SIGKILL)
                    except OSError:
                        pass
            self.remove(name)


def is_child_command(cmdline, name):
    """Whether ``cmdline`` runs the model server under ``name``."""
    return MODEL_SERVER_MODULE in cmdline and '--name' in cmdline and \
        cmdline[cmdline.index('--name') + 1:cmdline.index('--name') + 2] == [name]


def _running_gateway(parent):
    """The pid of ``parent`` when it is a live gateway other than this one, else None."""
    if parent is None or parent.pid in (1, os.getpid()):
        return None
    try:
        cmdline = parent.cmdline()
    except (psutil.Error, OSError):
        return None
    programs = {os.path.basename(part) for part in cmdline[:2]}  # "bis-gateway" or "python .../bis-gateway"
    named = any(part == GATEWAY_MODULE or part.endswith('.tac') for part in cmdline[1:])
    return parent.pid if named or programs & {'bis-gateway', 'twistd'} else None


GATEWAY_MODULE = 'bis_twisted.gateway.cli'
