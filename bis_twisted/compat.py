"""The original library's launcher API, for the README's ``run_gateway.py``:
``FlaskGateway(...)`` starts the gateway and serves until it stops (the original's constructor
blocked too), and ``get_packages()`` lists the installed packages."""

import importlib.metadata
import os


def get_packages():
    """``["name==version", ...]`` of the installed distributions, sorted by name."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata['Name']
        if name:
            found[name.lower()] = '{}=={}'.format(name, dist.version)
    return [found[k] for k in sorted(found)]


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
        from .service import Options  # not at import: endpoint files import this package too

        config = getattr(log, 'config_file', None) or 'config_gateway.txt'
        cache = os.path.join(getattr(log, 'base_folder', '.'), getattr(log, 'app_folder', '_cache'))
        self.options = Options(config=config, host=host, port=int(port), endpoints=workers_location,
                               cache=cache, admin_token=os.environ.get('BIS_ADMIN_TOKEN') or None,
                               execution_path=server_execution_path)
        if run:
            from .cli import run as run_gateway
            run_gateway(self.options)
