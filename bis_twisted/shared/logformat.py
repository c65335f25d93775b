"""How a process writes its log: twisted's text lines (the default) or one JSON object per line.

``LOG_FORMAT: "json"`` in the gateway's config (or ``BIS_LOG_FORMAT=json`` in its environment,
which wins) turns the second on for the gateway and, through the child's ``--log-format`` flag,
for every model server it starts. A JSON line holds ``time`` (RFC 3339, UTC), ``level``,
``logger`` (the event's namespace) and ``message``, then whichever of ``CONTEXT_FIELDS`` the
event carries (a field named ``rid`` counts as ``request_id``), and ``error`` with the
traceback when the event logged a failure.

The format is one setting per process, like twisted's global log publisher it applies to:
``configure`` sets it at start, ``current`` reads it.
"""

import datetime
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, TextIO

from twisted.logger import (FileLogObserver, ILogObserver, formatEvent, formatEventAsClassicLogText, formatTime,
                            timeFormatRFC3339)

from ..protocol import LOG_FORMAT_VARIABLE, LOG_FORMATS

TEXT, JSON = LOG_FORMATS
# access: the facts of an access-log line (gateway/accesslog.py)
CONTEXT_FIELDS = ('endpoint', 'request_id', 'trace_id', 'span_id', 'worker_id', 'access')
_FIELD_ALIASES = {'rid': 'request_id'}

_format = TEXT
# fields every JSON line of this process carries unless the event has its own (a model
# server's endpoint name)
_process_fields: Dict[str, Any] = {}
# () -> {'trace_id': ..., 'span_id': ...} of the span current where the event was logged
_trace_fields: Optional[Callable[[], Mapping[str, str]]] = None


class LogFormatError(ValueError):
    """A log format that is neither text nor json."""


def resolve(configured: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The format to use: ``BIS_LOG_FORMAT`` when set, else ``configured`` (the config key or a
    flag), else text. Raises ``LogFormatError`` naming where a bad value came from."""
    environ = os.environ if environ is None else environ
    from_env = (environ.get(LOG_FORMAT_VARIABLE) or '').strip().lower()
    value, source = (from_env, LOG_FORMAT_VARIABLE) if from_env else (configured or TEXT, 'LOG_FORMAT')
    if value not in LOG_FORMATS:
        raise LogFormatError('{} must be "text" or "json", got {!r}'.format(source, value))
    return value


def configure(log_format: str, **process_fields: Any) -> None:
    """Set this process's format (``resolve``'s answer) and the fields every line carries."""
    global _format
    if log_format not in LOG_FORMATS:
        raise LogFormatError('log format must be "text" or "json", got {!r}'.format(log_format))
    _format = log_format
    _process_fields.clear()
    _process_fields.update(process_fields)


def current() -> str:
    return _format


def is_json() -> bool:
    return _format == JSON


def child_flag() -> Optional[str]:
    """The model server's ``--log-format`` value (None: leave the flag out, text)."""
    return JSON if _format == JSON else None


def set_trace_fields(source: Optional[Callable[[], Mapping[str, str]]]) -> None:
    """Where JSON lines take ``trace_id`` and ``span_id`` from when the event has none."""
    global _trace_fields
    _trace_fields = source


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as RFC 3339 in UTC, to the microsecond."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec='microseconds').replace('+00:00', 'Z')


def event_record(event: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON object of one ``twisted.logger`` event."""
    level = event.get('log_level')
    record: Dict[str, Any] = {
        'time': rfc3339(event.get('log_time') or 0.0),
        'level': getattr(level, 'name', 'info'),
        'logger': event.get('log_namespace') or '-',
        'message': _message(event),
    }
    for name, value in _process_fields.items():
        record[name] = value
    for name in ('rid',) + CONTEXT_FIELDS:
        value = event.get(name)
        if value is not None:
            record[_FIELD_ALIASES.get(name, name)] = value
    if 'trace_id' not in record and _trace_fields is not None:
        record.update(_trace_fields())
    failure = event.get('log_failure')
    if failure is not None:
        record['error'] = failure.getTraceback()
    return record


def _message(event: Mapping[str, Any]) -> str:
    if event.get('log_format') == LINE_FORMAT and isinstance(event.get(LINE_FIELD), str):
        return event[LINE_FIELD]  # a line made already
    return formatEvent(event)


def dumps(record: Mapping[str, Any]) -> str:
    """One JSON line (a value JSON cannot hold is written as its ``str``)."""
    return json.dumps(record, ensure_ascii=False, default=str) + '\n'


def json_line(event: Mapping[str, Any]) -> str:
    return dumps(event_record(event))


def file_observer(out: TextIO, log_format: Optional[str] = None) -> ILogObserver:
    """An observer writing to ``out`` in ``log_format`` (default: this process's)."""
    if (log_format or _format) == JSON:
        return FileLogObserver(out, json_line)
    return FileLogObserver(out, text_line)


# An event logged as ``log.info(LINE_FORMAT, **{LINE_FIELD: text})`` is a line made already
# (the access log's, one per request): its text is taken as it is, not formatted again.
LINE_FIELD = 'access_line'
LINE_FORMAT = '{' + LINE_FIELD + '}'
_second_text: tuple = (None, '')  # (whole second, its local RFC 3339 text), replaced whole


def _time_text(when: Optional[float]) -> str:
    """twisted's own timestamp of a text line (local time, to the second), made once a second
    rather than once a line: a busy gateway writes thousands of lines in one second."""
    global _second_text
    if when is None:
        return formatTime(when)
    cached = _second_text
    if cached[0] != int(when):
        cached = _second_text = (int(when), formatTime(when, timeFormatRFC3339))
    return cached[1]


def text_line(event: Mapping[str, Any]) -> Optional[str]:
    """twisted's classic text line (``textFileLogObserver``'s, byte for byte), with the
    timestamp made once a second and a line made already taken as it is."""
    if event.get('log_format') == LINE_FORMAT and 'log_failure' not in event and 'log_system' not in event:
        text = event.get(LINE_FIELD)
        if isinstance(text, str) and text and '\n' not in text:
            level = event.get('log_level')
            return '{} [{}#{}] {}\n'.format(_time_text(event.get('log_time')), event.get('log_namespace', '-'),
                                            '-' if level is None else level.name, text)
    return formatEventAsClassicLogText(event, formatTime=_time_text)
