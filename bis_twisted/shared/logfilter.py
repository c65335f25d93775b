"""Log lines a reader can use: Twisted's own port chatter left out, and no prefix said twice.

``quiet(observer)`` drops the lines Twisted writes for every port it opens and closes
(``GuardedSite starting on '\\x00bis-1234-...'``, ``(TCP Port 5003 Closed)``): the gateway
and the model server say where they serve in lines of their own. ``child_line(name)`` is the
model server's line format when the gateway reads its output (the gateway stamps the time and
puts ``[name]`` in front): the event's namespace, unless it is that name again (a worker's
``log.P``) or Twisted's ``log_legacy``.
"""

import re

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

_PORT_CHATTER = re.compile(r"^(\S+ starting on \S+|\((TCP|UNIX|UDP) Port \S* ?\S+ Closed\))$")


def is_port_chatter(event):
    """True for Twisted's "<factory> starting on <port>" and "(TCP Port <n> Closed)" lines."""
    if event.get('log_namespace') not in ('log_legacy', 'twisted.internet.tcp', 'twisted.internet.unix'):
        return False  # asked first: most lines are not Twisted's, and this is cheaper than the level's
    if event.get('log_level', LogLevel.info) > LogLevel.info:
        return False
    return bool(_PORT_CHATTER.match(formatEvent(event)))


@implementer(ILogObserver)
class _Quiet:
    """What ``FilteringLogObserver`` with this one predicate does, without its generality
    (a predicate loop, and a trace hook per event): it sees every line, an access line per
    request among them."""

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event):
        if not is_port_chatter(event):
            if 'log_trace' in event:  # as FilteringLogObserver: LogPublisher's trace of who saw it
                event['log_trace'].append((self, self.observer))
            self.observer(event)


def quiet(observer):
    """``observer`` without Twisted's per-port lines."""
    return _Quiet(observer)


def child_line(name):
    """The line format of a model server ``name`` whose output the gateway reads."""
    def line(event):
        namespace = event.get('log_namespace', '-')
        text = formatEvent(event)
        if namespace in (name, 'log_legacy', '-'):
            return text + '\n'
        return '[{}] {}\n'.format(namespace, text)
    return line
