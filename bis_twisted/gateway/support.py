"""Support processes: config entries with ``"HOST": "NO_HOST"``, run inside the gateway.

Each is a ``LoopingCall`` every ``PING_INTERVAL`` seconds (a ``TimerService``, so it starts
and stops with the gateway) that runs the ``execute()`` of the class found in
``endpoints/<name>.py`` (the original's ``ServerMonitor``) in a thread, never two at once, so
a slow monitor skips ticks. Watching the model servers is not theirs: ``health.HealthMonitor``
does it, always, however many support entries there are.
"""

import inspect

from twisted.application.internet import TimerService
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..errors import EndpointLoadError
from ..logger import Logger as CompatLogger
from ..protocol import endpoint_file
from ..shared.userfile import load_module

SUPPORT_STATUS_PATH = '/support_update_status'


def find_monitor_class(module, path):
    """The first class defined in the file that has an ``execute`` method."""
    for value in vars(module).values():
        if inspect.isclass(value) and value.__module__ == module.__name__ and callable(getattr(value, 'execute', None)):
            return value
    raise EndpointLoadError('{}: no class with an execute() method'.format(path))


class SupportProcess(TimerService):
    """One support entry: its monitor, when its file has one."""

    _log = Logger()

    def __init__(self, endpoint, fleet, gateway_port, endpoints_dir, reactor=None, threadpool=None,
                 status_path=SUPPORT_STATUS_PATH, secret=None):
        if reactor is None:
            from twisted.internet import reactor
        TimerService.__init__(self, endpoint.ping_interval, self.tick)
        self.clock = reactor  # TimerService's LoopingCall uses it: a Clock in tests
        self._reactor = reactor
        self._threadpool = threadpool
        self.name = endpoint.name
        self.endpoint = endpoint
        self.fleet = fleet
        self.ticks = 0
        self.monitor = None
        self._monitor_running = False
        if endpoint.has_file:
            path = endpoint_file(endpoints_dir, endpoint.server_class)
            config = dict(endpoint.entry, SERVER='127.0.0.1', SERVER_PORT=gateway_port,
                          SERVER_PATH=status_path, SUPPORT_NAME=endpoint.name)
            log = CompatLogger(lib_name=endpoint.name, config_data=config)
            log.hide(secret)  # in status_path: the monitor's own messages print its URL
            cls = find_monitor_class(load_module(path), path)
            try:
                self.monitor = cls(name=endpoint.name, log=log)
            except Exception as exc:  # the user's constructor; reported as a config error
                raise EndpointLoadError('{}: {}(name=..., log=...) failed: {}: {}'.format(
                    path, cls.__name__, type(exc).__name__, exc)) from None

    def tick(self):
        # LoopingCall stops for good on an error: nothing may escape from here
        self.ticks += 1
        if self.monitor is not None and not self._monitor_running:
            self._monitor_running = True
            d = deferToThreadPool(self._reactor, self._threadpool or self._reactor.getThreadPool(),
                                  self.monitor.execute)
            d.addErrback(lambda f: self._log.failure('support {name}: execute() failed', f, name=self.name))
            d.addBoth(self._monitor_done)

    def _monitor_done(self, _):
        self._monitor_running = False
