"""``bis-gateway``: flags and environment -> ``Options`` -> the service tree, on the reactor;
``bis-gateway check`` and ``bis-gateway new NAME`` (``check.py``, ``scaffold.py``) take the same flags.

Every flag has an environment variable (the README lists them); a flag wins over its variable.
``BIS_ADMIN_TOKEN`` has no flag, so the secret never shows in ``ps``.
"""

import argparse
import os
import sys

from twisted.logger import Logger, globalLogBeginner
from twisted.python.logfile import LogFile

from .._version import __version__
from ..errors import ConfigError
from ..protocol import LOG_FORMATS, TOKEN_VARIABLE
from ..shared import logformat, tracing
from ..shared.logfilter import quiet
from ..shared.logwrites import LinesPerTurn
from .config import read_json_file
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
    return Options(admin_token=environ.get(TOKEN_VARIABLE) or None,
                   execution_path=overrides.get('execution_path') or defaults.execution_path,
                   reload=bool(overrides.get('reload')), **values)


COMMANDS_HELP = """commands (before the flags; without one, the gateway runs):
  bis-gateway check [--load] [--config F] [--endpoints D]
                                                        validate the config (unknown keys, ports), import
                                                        every enabled endpoint file (each in a child; with
                                                        --load run its _load_model too); exit 1 on problems
  bis-gateway schema                                   print the config file's JSON Schema
  bis-gateway new NAME [--config F] [--endpoints D]    write a commented endpoint skeleton to
                                                        <endpoints>/NAME.py and add NAME to the config
  bis-gateway key add NAME [--file F] [--allow E,E|*] [--rate R] [--burst B]
                                                        make an API key for /run, print it once, store
                                                        its SHA-256 in the API_KEYS file
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
    parser.add_argument('--version', action='version', version='bis-gateway {}'.format(__version__))
    _add_flags(parser)
    parser.add_argument('--reload', action='store_true',
                        help='development: reload the config and the endpoint servers when their files change')
    args = parser.parse_args(argv)
    return options_from_env(environ, **vars(args))


def check_main(argv, environ=None):
    """``bis-gateway check``: the exit code."""
    from .check import run_check

    parser = argparse.ArgumentParser(prog='bis-gateway check', description=(
        'Validate the config (every key, the ports) and import every enabled endpoint file (each in a '
        'child, as serving would); one line per problem, exit 1 if any.'))
    parser.add_argument('--load', action='store_true',
                        help="also build a worker of each endpoint and run its _load_model (within LOAD_TIMEOUT)")
    _add_flags(parser)
    args = vars(parser.parse_args(argv))
    load = args.pop('load')
    options = options_from_env(environ, **args)
    return run_check(options, load=load)


def schema_main(argv, environ=None):
    """``bis-gateway schema``: print the config file's JSON Schema."""
    import json as json_module

    from .config_keys import config_schema

    argparse.ArgumentParser(prog='bis-gateway schema', description=(
        "Print the JSON Schema of the config file (the gateway validates with the same table); "
        'point an editor at it.')).parse_args(argv)
    sys.stdout.write(json_module.dumps(config_schema(), indent=2) + '\n')
    return 0


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


def key_main(argv, environ=None):
    """``bis-gateway key add NAME``: the exit code."""
    import json as json_module

    from .apikeys import ALL_ENDPOINTS, add_key

    parser = argparse.ArgumentParser(prog='bis-gateway key', description=(
        'Make an API key for /run: it is printed once, and only its SHA-256 is written to the API_KEYS '
        'file. The gateway reads the file at start and on POST /reload_config.'))
    parser.add_argument('action', choices=['add'])
    parser.add_argument('name', help="the key's name: shown in logs and /metrics (the key never is)")
    parser.add_argument('--file', help="the API keys file (default: the config's API_KEYS)")
    parser.add_argument('--allow', default=ALL_ENDPOINTS,
                        help='endpoints it may call, comma-separated, or * for all (default *)')
    parser.add_argument('--rate', type=float, help='requests per second it may make (default: no limit)')
    parser.add_argument('--burst', type=float, help='requests it may make at once (default: the rate, >= 1)')
    parser.add_argument('--config', help='gateway config file, for its API_KEYS (env BIS_CONFIG)')
    args = parser.parse_args(argv)
    path = args.file
    if path is None:
        config = args.config or (environ or os.environ).get('BIS_CONFIG', 'config_gateway.txt')
        try:
            with open(config, encoding='utf-8') as fh:
                named = json_module.load(fh).get('API_KEYS')
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError('{}: cannot read its API_KEYS ({}); give --file'.format(config, exc)) from None
        if not isinstance(named, str):
            raise ConfigError('{}: has no "API_KEYS": "<file>" at the top; add one, or give --file'.format(config))
        path = os.path.join(os.path.dirname(os.path.abspath(config)), named)
    allow = ALL_ENDPOINTS if args.allow.strip() == ALL_ENDPOINTS else [e.strip() for e in args.allow.split(',')
                                                                      if e.strip()]
    key = add_key(path, args.name, allow, args.rate, args.burst)
    sys.stdout.write('{}\n'.format(key))
    sys.stderr.write('bis-gateway key: added {!r} to {} (only its SHA-256); the key above is shown this once. '
                     'POST /reload_config (or restart) to put it in service.\n'.format(args.name, path))
    return 0


COMMANDS = {'check': check_main, 'new': new_main, 'key': key_main, 'schema': schema_main}


def configure_log_format(options, environ=None):
    """Set the log format of the gateway and its children (``BIS_LOG_FORMAT``, else the
    config's ``LOG_FORMAT``), before the service tree builds the children's command lines.
    A bad value in the config is left for the config's own validation to report."""
    try:
        configured = read_json_file(options.config, 'the config file').get('LOG_FORMAT')
    except (ConfigError, AttributeError):
        configured = None
    if configured not in LOG_FORMATS:
        configured = None
    try:
        log_format = logformat.resolve(configured, environ)
    except logformat.LogFormatError as exc:  # BIS_LOG_FORMAT is neither
        sys.stderr.write('bis-gateway: {}\n'.format(exc))
        raise SystemExit(2)
    logformat.configure(log_format)


def start_tracing(reactor):
    """OpenTelemetry traces, when the OTEL_* variables ask for them (README: Observability)."""
    if tracing.setup('bis-gateway', reactor, process='gateway'):
        logformat.set_trace_fields(tracing.current_ids)


def log_observer(options, reactor=None):
    """The gateway's log: every event to stdout and to ``<cache>/_logs/gateway.log``, rotated
    by size, in the process's format, Twisted's port chatter left out. One observer for both
    files: each line is filtered and formatted once, and the lines of one reactor turn go to
    each file in one write."""
    if reactor is None:
        from twisted.internet import reactor
    os.makedirs(options.logs_dir, exist_ok=True)
    logfile = LogFile('gateway.log', options.logs_dir, rotateLength=10_000_000, maxRotatedFiles=5)
    return quiet(logformat.file_observer(LinesPerTurn(sys.stdout, reactor, also=(logfile,))))


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
    configure_log_format(options)
    start_tracing(reactor)
    service = build_service(options, reactor)
    globalLogBeginner.beginLoggingTo([log_observer(options, reactor)], redirectStandardIO=False)
    Logger().info('bis-gateway starting with {config}', config=options.config)
    service.startService()
    reactor.addSystemEventTrigger('before', 'shutdown', service.stopService)
    reactor.run()


if __name__ == '__main__':
    main()
