"""``Logger``: the original library's logging object, kept for endpoint and support files.

Endpoint code calls ``self.log.P(msg, color=...)``; the README's ``support_process.py`` and
``run_gateway.py`` build ``Logger(lib_name=..., config_file=..., base_folder=...,
app_folder=...)`` and read ``log.config_data``. Messages go to ``twisted.logger`` (so they land
in the process's log files and, for a model server, in the gateway's log); ``color`` is kept as
a field, not printed as escape codes.
"""

import json
import os
import sys
import traceback
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, Union

from twisted.logger import Logger as _TwistedLogger

_COLOR_LEVELS: Dict[Optional[str], str] = {'r': 'warn'}

# ``(type name, file, function, line, message)`` of an exception, as ``error_info`` makes it
ErrorInfo = Tuple[str, str, str, Optional[int], str]


class Logger:
    """What the original ``Logger`` offered to user code: ``P``, ``config_data``,
    ``update_config_data``, ``get_error_info``."""

    def __init__(self, lib_name: str = 'BIS', config_file: Union[str, 'os.PathLike[str]', None] = None,
                 base_folder: str = '.', app_folder: str = '_cache', prefix_log: str = '',
                 config_data: Optional[Mapping[str, Any]] = None, **_ignored: Any) -> None:
        # ``TF_KERAS``, ``max_lines`` and other knobs of the original are accepted and ignored.
        self.lib_name = lib_name
        self.prefix_log = prefix_log
        self.base_folder = base_folder
        self.app_folder = app_folder
        self.config_file = config_file
        self.config_data: Dict[str, Any] = {}
        if config_file:
            with open(config_file, encoding='utf-8') as fh:
                self.config_data = json.load(fh)
        if config_data:
            self.config_data.update(config_data)
        self._log = _TwistedLogger(namespace=lib_name)
        self._hidden: List[str] = []
        # () -> fields every message carries (a worker's worker_id and current request_id)
        self.context: Optional[Callable[[], Mapping[str, Any]]] = None

    def hide(self, secret: str) -> None:
        """Never print ``secret``: it is shown as ``<hidden>`` in what ``P`` logs (a URL
        the gateway gave user code, with a key in it, say)."""
        if secret:
            self._hidden.append(secret)

    def update_config_data(self, new_data: Optional[Mapping[str, Any]]) -> None:
        self.config_data.update(new_data or {})

    def with_prefix(self, prefix_log: str, config_data: Optional[Mapping[str, Any]] = None) -> 'Logger':
        """A logger for one worker: same destination, its own prefix and config."""
        child = Logger.__new__(Logger)
        child.__dict__.update(self.__dict__)
        child.prefix_log = prefix_log or self.prefix_log
        child.config_data = dict(config_data if config_data is not None else self.config_data)
        return child

    def P(self, s: object, color: Optional[str] = None, **_kwargs: Any) -> None:  # noqa: N802 - the original's name
        level = _COLOR_LEVELS.get(color, 'info')
        msg = str(s)
        for secret in self._hidden:
            msg = msg.replace(secret, '<hidden>')
        fields = self.context() if self.context is not None else {}
        getattr(self._log, level)('{prefix}{msg}', prefix=(self.prefix_log + ' ') if self.prefix_log else '',
                                  msg=msg, color=color, **fields)

    @property
    def root_folder(self) -> str:
        return os.path.join(self.base_folder, self.app_folder)

    @staticmethod
    def get_error_info(return_err_val: bool = False) -> Union[ErrorInfo, Tuple[str, str, str, Optional[int]]]:
        """``(type, file, function, line[, message])`` of the exception being handled,
        taken from the innermost frame (where it was raised)."""
        info = error_info(*sys.exc_info())
        return info if return_err_val else info[:4]


def error_info(exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
               tb: Optional[TracebackType]) -> ErrorInfo:
    frames = traceback.extract_tb(tb)
    last = frames[-1] if frames else None
    return (
        exc_type.__name__ if exc_type else 'Exception',
        last.filename if last else '',
        last.name if last else '',
        last.lineno if last else 0,
        str(exc),
    )


def describe_failure(stage: str, info: ErrorInfo) -> str:
    """One line for an ``error_info`` tuple: ``<stage> failed: <type>: <message> (<file>:<line>)``."""
    err_type, err_file, _func, err_line, err_msg = info
    return '{} failed: {}: {} ({}:{})'.format(stage, err_type, err_msg, err_file, err_line)
