# twistd -n -y bis.tac : the gateway as a twistd application.
# Settings come from the environment (BIS_CONFIG, BIS_HOST, BIS_PORT, BIS_ENDPOINTS,
# BIS_CACHE, BIS_ADMIN_TOKEN, BIS_LOG_FORMAT); `bis-gateway --help` shows the same settings as flags.
import sys

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from bis_twisted.gateway.cli import build_service, configure_log_format, log_to_files, options_from_env, start_tracing
from bis_twisted.shared import logformat
from bis_twisted.shared.logwrites import LinesPerTurn

options = options_from_env()
configure_log_format(options)
start_tracing(reactor)
application = Application('bis_twisted')
# twistd's own stdout observer would write text, formatting each line's time anew, and write
# each line on its own
application.setComponent(ILogObserver, logformat.file_observer(LinesPerTurn(sys.stdout, reactor)))
build_service(options).setServiceParent(application)
log_to_files(options, reactor)
