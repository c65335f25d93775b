"""The original library's launcher API, for the README's ``run_gateway.py``:
``FlaskGateway(...)`` starts the gateway and serves until it stops (the original's constructor
blocked too), and ``get_packages()`` lists the installed packages."""

import os

from .gateway.cli import run as run_gateway
from .gateway.service import Options
from .gateway.status import get_packages
from .protocol import TOKEN_VARIABLE

__all__ = ['FlaskGateway', 'get_packages']


class FlaskGateway:
    """Runs the gateway with the original's arguments; returns when the gateway stops.

    ``log`` is a ``bis_twisted.Logger``: its ``config_file`` is the gateway config and
    ``base_folder/app_folder`` the cache. ``workers_suffix`` must be ``'Worker'`` (class names
    are ``<FileNameWithoutUnderscores>Worker``); other arguments of the original
    (``server_names``, ``first_server_port``) are accepted and ignored: the config decides.
    """

    def __init__(self, log=None, workers_location='endpoints', workers_suffix='Worker', host='0.0.0.0',
                 port=5002, server_execution_path='/run', run=True, **_ignored):
        if workers_suffix != 'Worker':
            raise ValueError("workers_suffix must be 'Worker' in bis_twisted, got {!r}".format(workers_suffix))
        config = getattr(log, 'config_file', None) or 'config_gateway.txt'
        cache = os.path.join(getattr(log, 'base_folder', '.'), getattr(log, 'app_folder', '_cache'))
        self.options = Options(config=config, host=host, port=int(port), endpoints=workers_location,
                               cache=cache, admin_token=os.environ.get(TOKEN_VARIABLE) or None,
                               execution_path=server_execution_path)
        if run:
            run_gateway(self.options)
