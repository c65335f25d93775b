"""A child's output lines, as they go to its log file and to the gateway's log.

In the text format a line is written as it came, behind a timestamp. In the JSON format
(``logformat``) a model server already writes its own log events as JSON objects: those are
kept, with the child's name as ``endpoint`` when the line has none; anything else the child
prints (a user's ``print``, a progress bar, a traceback on stderr) becomes a JSON object whose
``message`` is the line, ``logger`` ``stdout`` or ``stderr``, level ``info`` or ``warn``.
"""

import json
import time
from typing import Any, Dict, Optional

from twisted.logger import InvalidLogLevelError, LogLevel

from ..shared import logformat

STREAMS = {1: ('stdout', 'info'), 2: ('stderr', 'warn')}


def child_record(line: str) -> Optional[Dict[str, Any]]:
    """The JSON log record a model server wrote as ``line``, or None (a line of other output)."""
    if not line.startswith('{'):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get('message'), str) and 'time' in record:
        return record
    return None


def wrapped_record(name: str, fd: int, line: str, now: float) -> Dict[str, Any]:
    """A JSON log record for a line of ``name``'s output that is not one already."""
    stream, level = STREAMS.get(fd, ('fd{}'.format(fd), 'info'))
    return {'time': logformat.rfc3339(now), 'level': level, 'logger': stream, 'message': line,
            'endpoint': name}


def file_line(name: str, fd: int, line: str, now: Optional[float] = None) -> str:
    """``line`` of child ``name`` (from ``fd``) as it goes to the child's log file."""
    now = time.time() if now is None else now
    if not logformat.is_json():
        return '{} {}\n'.format(time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(now)), line)
    record = child_record(line)
    if record is None:
        record = wrapped_record(name, fd, line, now)
    else:
        record.setdefault('endpoint', name)
    return logformat.dumps(record)


def relay(log: Any, name: str, fd: int, line: str) -> None:
    """Log ``line`` of child ``name`` in the gateway's own log through ``log`` (a
    ``twisted.logger.Logger``): ``[name] line``; a child's JSON record keeps its level and
    context fields there."""
    record = child_record(line) if logformat.is_json() else None
    if record is None:
        log.info('[{name}] {line}', name=name, line=line, endpoint=name)
        return
    fields = {key: record[key] for key in logformat.CONTEXT_FIELDS if key in record}
    fields.setdefault('endpoint', name)
    try:
        level = LogLevel.levelWithName(str(record.get('level')))
    except InvalidLogLevelError:
        level = LogLevel.info
    log.emit(level, '[{endpoint}] {line}', line=record['message'], child_logger=record.get('logger'),
             **fields)
