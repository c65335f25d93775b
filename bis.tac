# twistd -n -y bis.tac : the gateway as a twistd application.
# Settings come from the environment (BIS_CONFIG, BIS_HOST, BIS_PORT, BIS_ENDPOINTS,
# BIS_CACHE, BIS_ADMIN_TOKEN, BIS_LOG_FORMAT); `bis-gateway --help` shows the same settings as flags.
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from bis_twisted.gateway.cli import build_service, configure_log_format, log_observer, options_from_env, start_tracing

options = options_from_env()
configure_log_format(options)
start_tracing(reactor)
application = Application('bis_twisted')
service = build_service(options)  # exits 2 with one line when the config cannot be used
# twistd's own stdout observer would write text, formatting each line's time anew, and write
# each line on its own; this one writes stdout and gateway.log
application.setComponent(ILogObserver, log_observer(options, reactor))
service.setServiceParent(application)
