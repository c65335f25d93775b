# twistd -n -y bis.tac : the gateway as a twistd application.
# Settings come from the environment (BIS_CONFIG, BIS_HOST, BIS_PORT, BIS_ENDPOINTS,
# BIS_CACHE, BIS_ADMIN_TOKEN); `bis-gateway --help` shows the same settings as flags.
from twisted.application.service import Application

from bis_twisted.gateway.cli import build_service, log_to_files, options_from_env

options = options_from_env()
application = Application('bis_twisted')
build_service(options).setServiceParent(application)
log_to_files(options)
