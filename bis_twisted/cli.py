"""``bis-gateway``: flags and environment -> ``Options`` -> the service tree, on the reactor;
``bis-gateway check`` and ``bis-gateway new NAME`` (``check.py``, ``scaffold.py``) take the same flags.

Every flag has an environment variable (API.md section 5); a flag wins over its variable.
``BIS_ADMIN_TOKEN`` has no flag, so the secret never shows in ``ps``.
"""

import argparse
import json
import os
import sys

from twisted.logger import Logger, globalLogBeginner, globalLogPublisher, textFileLogObserver
from twisted.python.logfile import LogFile

from .errors import ConfigError
from .service import GatewayService, Options

ENV = {'config': 'BIS_CONFIG', 'host': 'BIS_HOST', 'port': 'BIS_PORT',
       'endpoints': 'BIS_ENDPOINTS', 'cache': 'BIS_CACHE'}


def options_from_env(environ=None, **overrides):
    environ = os.environ if environ is None else environ
    defaults = Options()
    values = {}
    for field, variable in ENV.items():
        value = overrides.get(field)
        if value is None:
            value = environ.get(variable) or getattr(defaults, field)
        values[field] = value
    try:
        values['port'] = int(values['port'])
    except ValueError:
        raise ConfigError('BIS_PORT / --port must be an integer, got {!r}'.format(values['port'])) from None
    return Options(admin_token=environ.get('BIS_ADMIN_TOKEN') or None,
                   execution_path=overrides.get('execution_path') or defaults.execution_path, **values)


COMMANDS_HELP = """commands (before the flags; without one, the gateway runs):
  bis-gateway check [--config F] [--endpoints D]       validate the config, import every enabled
                                                        endpoint file (each in a child); exit 1 on problems
  bis-gateway new NAME [--config F] [--endpoints D]    write a commented endpoint skeleton to
                                                        <endpoints>/NAME.py and add NAME to the config
  bis-gateway key add NAME [--file F] [--endpoints a,b|*] [--rate R] [--burst B]
                                                        make an API key for /run: prints it once,
                                                        writes only its SHA-256 to the API_KEYS file
"""


def _add_flags(parser):
    parser.add_argument('--config', help='gateway config file (env BIS_CONFIG; default config_gateway.txt)')
    parser.add_argument('--host', help='address to listen on (env BIS_HOST; default 0.0.0.0)')
    parser.add_argument('--port', help='port to listen on (env BIS_PORT; default 5002); '
                                       'endpoint servers count up from the next one')
    parser.add_argument('--endpoints', help='folder of endpoint files (env BIS_ENDPOINTS; default endpoints)')
    parser.add_argument('--cache', help='cache folder for logs and state (env BIS_CACHE; default _cache)')


def parse_args(argv, environ=None):
    parser = argparse.ArgumentParser(prog='bis-gateway', description='Run the bis_twisted gateway.',
                                     epilog=COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_flags(parser)
    args = parser.parse_args(argv)
    return options_from_env(environ, **vars(args))


def check_main(argv, environ=None):
    """``bis-gateway check``: the exit code."""
    from .check import run_check

    parser = argparse.ArgumentParser(prog='bis-gateway check', description=(
        'Validate the config and import every enabled endpoint file (each in a child, as serving '
        'would); one line per problem, exit 1 if any.'))
    _add_flags(parser)
    options = options_from_env(environ, **vars(parser.parse_args(argv)))
    return run_check(options)


def new_main(argv, environ=None):
    """``bis-gateway new NAME``: the exit code."""
    from .scaffold import run_new

    parser = argparse.ArgumentParser(prog='bis-gateway new', description=(
        'Write a commented endpoint skeleton to <endpoints>/NAME.py and add NAME to the config '
        '(never overwrites either).'))
    parser.add_argument('name', help='the endpoint (its file, class and SIGNATURE), e.g. my_model')
    _add_flags(parser)
    args = vars(parser.parse_args(argv))
    name = args.pop('name')
    return run_new(name, options_from_env(environ, **args))


def key_main(argv, environ=None, out=None):
    """``bis-gateway key add NAME``: the exit code. The file is ``--file``, else the config's
    ``API_KEYS`` (``--config`` / ``BIS_CONFIG``)."""
    from .apikeys import DEFAULT_BURST, DEFAULT_RATE, add_key
    from .config import _api_keys_path

    out = sys.stdout if out is None else out
    parser = argparse.ArgumentParser(prog='bis-gateway key', description=(
        'Manage the API keys of /run. `add NAME` generates a random key, prints it once and writes '
        'only its SHA-256 to the API_KEYS file (never replaces an existing name).'))
    parser.add_argument('action', choices=['add'])
    parser.add_argument('name', help='the key\'s name (what logs and /metrics show), e.g. team_a')
    parser.add_argument('--file', help='the API_KEYS file (default: the config\'s API_KEYS)')
    parser.add_argument('--config', help='gateway config file whose API_KEYS to use (env BIS_CONFIG)')
    parser.add_argument('--endpoints', default='*', help='endpoints the key may run: a,b or * (default *)')
    parser.add_argument('--rate', type=float, default=DEFAULT_RATE,
                        help='requests per second (default {:g})'.format(DEFAULT_RATE))
    parser.add_argument('--burst', type=int, default=DEFAULT_BURST,
                        help='requests at once above the rate (default {})'.format(DEFAULT_BURST))
    args = parser.parse_args(argv)
    path = args.file
    if path is None:
        environ = os.environ if environ is None else environ
        config = args.config or environ.get('BIS_CONFIG') or Options().config
        try:
            with open(config, encoding='utf-8') as fh:
                value = json.load(fh).get('API_KEYS')
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError('{}: cannot read API_KEYS from the config ({}); pass --file'.format(config, exc)) from None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("{}: the config sets no 'API_KEYS' file; set one or pass --file".format(config))
        path = _api_keys_path(config, value)
    endpoints = '*' if args.endpoints.strip() == '*' else [e.strip() for e in args.endpoints.split(',') if e.strip()]
    key = add_key(path, args.name, endpoints=endpoints, rate=args.rate, burst=args.burst)
    out.write('API key {!r} added to {} (only its SHA-256 is stored; this is the one time it is shown):\n'
              '{}\n'.format(args.name, path, key))
    out.write('reload a running gateway: POST /reload_config (admin)\n')
    return 0


COMMANDS = {'check': check_main, 'new': new_main, 'key': key_main}


def log_to_files(options):
    """Send every log event to ``<cache>/_logs/gateway.log`` too, rotated by size."""
    os.makedirs(options.logs_dir, exist_ok=True)
    logfile = LogFile('gateway.log', options.logs_dir, rotateLength=10_000_000, maxRotatedFiles=5)
    globalLogPublisher.addObserver(textFileLogObserver(logfile))


def build_service(options, reactor=None):
    """The service tree, or exit 2 with one line when the config cannot be used."""
    try:
        return GatewayService(options, reactor=reactor)
    except ConfigError as exc:
        sys.stderr.write('bis-gateway: {}\n'.format(exc))
        sys.stderr.flush()
        raise SystemExit(2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        try:
            raise SystemExit(COMMANDS[argv[0]](argv[1:]))
        except ConfigError as exc:
            sys.stderr.write('bis-gateway {}: {}\n'.format(argv[0], exc))
            raise SystemExit(2)

    from twisted.internet import reactor

    try:
        options = parse_args(argv)
    except ConfigError as exc:
        sys.stderr.write('bis-gateway: {}\n'.format(exc))
        raise SystemExit(2)
    run(options, reactor)


def run(options, reactor=None):
    """Build the service tree for ``options`` and serve until the reactor stops."""
    if reactor is None:
        from twisted.internet import reactor
    service = build_service(options, reactor)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    log_to_files(options)
    Logger().info('bis-gateway starting with {config}', config=options.config)
    service.startService()
    reactor.addSystemEventTrigger('before', 'shutdown', service.stopService)
    reactor.run()


if __name__ == '__main__':
    main()
