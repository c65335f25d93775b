"""``lock_cache``: one gateway per cache folder.

The folder holds the children's pid files, their logs and the state history; two gateways
writing there would take each other's children for leftovers and interleave their logs. The
first gateway holds an advisory lock on ``<cache>/gateway.lock`` (``flock``: the kernel lets it
go when the process ends, however it ends) with its pid in the file; a second one is refused
with a line naming that pid and the folder.
"""

import fcntl
import os

from ..errors import ConfigError

LOCK_NAME = 'gateway.lock'


class CacheLock:
    """The held lock; ``release()`` lets it go (also done by the process's end)."""

    def __init__(self, path, fd):
        self.path = path
        self._fd = fd

    def release(self):
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a pid left in the file would name a gateway that is gone
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the flock


def lock_cache(cache_dir):
    """Take ``<cache_dir>/gateway.lock`` (making the folder) or raise ``ConfigError`` naming the
    pid that holds it."""
    folder = os.path.abspath(cache_dir)
    path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError('cannot use the cache folder {}: {}'.format(folder, exc.strerror or exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_pid(fd)
        os.close(fd)
        raise ConfigError('the cache folder {} is in use by another gateway ({}); stop it, or give this one '
                          'a cache folder of its own (--cache / BIS_CACHE)'.format(
                              folder, 'pid {}'.format(holder) if holder else 'its pid is not in {}'.format(path))) from None
    os.ftruncate(fd, 0)
    os.write(fd, '{}\n'.format(os.getpid()).encode('ascii'))
    return CacheLock(path, fd)


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
