"""What the gateway and its model servers must agree on, each fact once.

The gateway starts a model server as ``python -m bis_twisted.model_server <flags>`` with a
few variables in its environment, waits for its ready line on stdout, and talks HTTP to it
(over the Unix socket the child also listens on, when it was given one).
Both sides import this module and nothing of each other: the child's flags are built
(``child_argv``) and parsed (``child_parser``) from the one ``CHILD_FLAGS`` table.
"""

import argparse
import json
import os
from typing import Any, Dict, Final, List, Mapping, NamedTuple, Optional, Sequence, Tuple

# -- the child's start ---------------------------------------------------------------------
MODEL_SERVER_MODULE: Final[str] = 'bis_twisted.model_server'
READY_LINE: Final[str] = 'BIS-SERVER-READY'  # printed, then the port, once every worker has loaded
CONFIG_VARIABLE: Final[str] = 'BIS_SERVER_CONFIG'  # the endpoint's config entry, JSON (secrets stay out of `ps`)
CHILD_KEY_VARIABLE: Final[str] = 'BIS_SERVER_ADMIN_KEY'  # the bearer token of this child's control route
TOKEN_VARIABLE: Final[str] = 'BIS_ADMIN_TOKEN'  # the operator's admin token (gateway, or a server run alone)
DEVICE_VARIABLE: Final[str] = 'BIS_DEVICE'  # the device a replica was given (DEVICES), read as worker.device
LOG_FORMAT_VARIABLE: Final[str] = 'BIS_LOG_FORMAT'  # text or json, in either process (beats the config key)
LOG_FORMATS: Final[Tuple[str, str]] = ('text', 'json')

# -- HTTP between the two --------------------------------------------------------------------
SIGNATURE: Final[str] = 'SIGNATURE'  # the request field that names the endpoint
REQUEST_ID_HEADER: Final[bytes] = b'X-Request-Id'
# A streaming answer: one JSON object per line, each chunk a line that starts with
# CHUNK_PREFIX, the last line the summary (call_id, worker_id, chunks...) or the error that
# ended the stream. The gateway relays an answer of this type as it comes.
NDJSON_TYPE: Final[bytes] = b'application/x-ndjson'
CHUNK_PREFIX: Final[bytes] = b'{"predict_result":'
# The gateway's own fields of an answer (ver-app, ver-lib, hostname, gw-uptime), sent with
# each request as a JSON object: the model server adds them to its answer and says so, and
# the gateway passes that answer's bytes through without decoding them.
ANSWER_FIELDS_HEADER: Final[bytes] = b'X-Bis-Answer-Fields'
ANSWER_COMPLETE_HEADER: Final[bytes] = b'X-Bis-Answer-Complete'
MAX_ANSWER_FIELDS_BYTES: Final[int] = 4096
DEFAULT_EXECUTION_PATH: Final[str] = '/run'
# besides the execution path
SERVER_PATHS: Final[Tuple[str, ...]] = ('/notifications', '/update_workers', '/get_paths', '/health')

# -- defaults both sides apply -----------------------------------------------------------------
DEFAULT_MAX_QUEUE: Final[int] = 1024  # requests waiting for a worker, past which 503
DEFAULT_MAX_BODY_MB: Final[int] = 8
DEFAULT_BATCH_TIMEOUT: Final[float] = 0.01  # seconds a batch waits to fill up

# -- the endpoint files ---------------------------------------------------------------------
WORKER_SUFFIX: Final[str] = 'Worker'


def endpoint_file(endpoints_dir: str, server_class: str) -> str:
    """The file of endpoint ``server_class``: ``<endpoints_dir>/<server_class>.py``."""
    return os.path.join(endpoints_dir, server_class + '.py')


def expected_class_name(server_class: str, suffix: str = WORKER_SUFFIX) -> str:
    """The worker class an endpoint file must define, as users spell it
    (``dummy_model_demo2`` -> ``DummyModelDemo2Worker``); matched without case."""
    return ''.join(part[:1].upper() + part[1:] for part in server_class.split('_')) + suffix


def valid_nr_workers(value: Any) -> bool:
    """``NR_WORKERS`` is an integer >= 1 (a bool is not an integer here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


NR_WORKERS_RULE: Final[str] = 'an integer >= 1'


# -- the child's command line: one table -------------------------------------------------------
class Flag(NamedTuple):
    name: str  # child_argv's keyword, the parsed namespace's attribute
    type: Any  # str, int, float, or bool (a switch)
    default: Any
    required: bool
    help: str


CHILD_FLAGS: Final[Sequence[Flag]] = (
    Flag('endpoints', str, 'endpoints', False, 'folder of endpoint files'),
    Flag('name', str, None, True, 'the server name (its SIGNATURE)'),
    Flag('server_class', str, None, False, 'endpoint file to use (default: --name)'),
    Flag('host', str, '127.0.0.1', False, 'address to listen on'),
    Flag('port', int, None, True, '0 picks a free port'),
    Flag('config_json', str, None, False,
         "the endpoint's config entry, JSON (default: ${} or {{}})".format(CONFIG_VARIABLE)),
    Flag('path', str, DEFAULT_EXECUTION_PATH, False, 'execution path'),
    Flag('max_body_mb', float, None, False,
         'request bodies over this many MiB get 413 (default: MAX_BODY_MB of the config entry, '
         'else {})'.format(DEFAULT_MAX_BODY_MB)),
    Flag('max_bodies_mb', float, None, False,
         'MiB of request bodies held at once, past which 503 (default: MAX_BODIES_MB of the config '
         'entry, else the built-in default)'),
    Flag('unix_socket', str, None, False,
         'also listen on this Unix socket (@name: in the abstract namespace): the gateway reaches '
         "its children there, which skips the kernel's TCP work on every request"),
    Flag('log_format', str, None, False,
         'text, or json: one JSON object per log line (default: ${}, else text)'.format(LOG_FORMAT_VARIABLE)),
    Flag('exit_with_parent', bool, False, False, 'exit when stdin closes (the gateway sets this)'),
    Flag('nice', int, None, False, "added to the process's nice value at start: a shadow rollout's candidate runs "
         'at 19, on the CPU the serving version leaves'),
)


def _option(name: str) -> str:
    return '--' + name.replace('_', '-')


def child_argv(python: str, **values: Any) -> List[str]:
    """The command line that starts a model server with these flag values (``None`` and
    ``False`` leave a flag out)."""
    known = {flag.name: flag for flag in CHILD_FLAGS}
    unknown = set(values) - set(known)
    if unknown:
        raise TypeError('not a model server flag: {}'.format(', '.join(sorted(unknown))))
    argv = [python, '-m', MODEL_SERVER_MODULE]
    for flag in CHILD_FLAGS:
        value = values.get(flag.name)
        if value is None or value is False:
            if flag.required:
                raise TypeError('the model server needs --{}'.format(flag.name.replace('_', '-')))
            continue
        if flag.type is bool:
            argv.append(_option(flag.name))
        else:
            argv.extend([_option(flag.name), str(value)])
    return argv


def unix_address(flag_value: str) -> str:
    """The socket address of a ``--unix-socket`` value: ``@name`` is ``name`` in Linux's
    abstract namespace (a command line cannot hold its leading NUL), anything else a path."""
    return '\0' + flag_value[1:] if flag_value.startswith('@') else flag_value


def child_parser(prog: str = 'python -m ' + MODEL_SERVER_MODULE) -> argparse.ArgumentParser:
    """The parser of the model server's command line, from ``CHILD_FLAGS``."""
    parser = argparse.ArgumentParser(prog=prog, description='Run one bis_twisted model server.')
    for flag in CHILD_FLAGS:
        if flag.type is bool:
            parser.add_argument(_option(flag.name), action='store_true', help=flag.help)
        else:
            parser.add_argument(_option(flag.name), type=flag.type, default=flag.default,
                                required=flag.required, help=flag.help)
    return parser


def parse_child_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return child_parser().parse_args(argv)


def child_environment(base: Mapping[str, str], entry: Dict[str, Any], admin_key: Optional[str],
                      device: Optional[int]) -> Dict[str, str]:
    """The environment of a spawned model server: ``base`` with the config entry, the
    child's own control key and, for a replica given a device, that device alone."""
    env = dict(base)
    env[CONFIG_VARIABLE] = json.dumps(entry)
    if admin_key is not None:
        env[CHILD_KEY_VARIABLE] = admin_key
    env.pop(DEVICE_VARIABLE, None)
    if device is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(device)  # the replica sees its one device, as cuda:0
        env[DEVICE_VARIABLE] = 'cuda:0'
    return env


# -- the gateway's fields in a model server's answer ---------------------------------------------
def encode_answer_fields(fields: Mapping[str, str]) -> bytes:
    """The ``ANSWER_FIELDS_HEADER`` value of the gateway's fields (ASCII JSON: a header)."""
    return json.dumps(dict(fields), ensure_ascii=True).encode('ascii')


def decode_answer_fields(value: Optional[bytes]) -> Optional[Dict[str, str]]:
    """The fields of an ``ANSWER_FIELDS_HEADER`` value: a JSON object of strings, at most
    ``MAX_ANSWER_FIELDS_BYTES``; None for anything else (then the answer is not completed)."""
    if not value or len(value) > MAX_ANSWER_FIELDS_BYTES:
        return None
    try:
        fields = json.loads(value)
    except ValueError:
        return None
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        return None
    return fields
