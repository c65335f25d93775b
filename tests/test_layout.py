"""The package's layout: two programs that never import each other, what they agree on in
``bis_twisted.protocol``, the endpoint API at the package's top, both programs runnable as
modules, and the model server's life as a service tree."""

import json
import os
import subprocess
import sys

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from bis_twisted import protocol
from bis_twisted.shared.waiters import Waiters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules_after_import(module):
    code = 'import sys, json, {0}; print(json.dumps(sorted(m for m in sys.modules if m.startswith("bis_twisted"))))'
    done = subprocess.run([sys.executable, '-c', code.format(module)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_gateway_does_not_import_the_model_server_or_the_worker_side():
    loaded = modules_after_import('bis_twisted.gateway.service')
    assert 'bis_twisted.gateway.fleet' in loaded
    worker_side = [m for m in loaded if m.startswith('bis_twisted.model_server')
                   or m in ('bis_twisted.worker', 'bis_twisted.notifications')]
    assert worker_side == []


def test_the_model_server_does_not_import_the_gateway():
    loaded = modules_after_import('bis_twisted.model_server.service')
    assert 'bis_twisted.model_server.pool' in loaded
    assert [m for m in loaded if m.startswith('bis_twisted.gateway')] == []


def test_endpoint_files_import_the_api_from_the_package():
    import bis_twisted
    from bis_twisted import FlaskGateway, FlaskWorker, Logger, Worker, get_packages
    from bis_twisted.worker import FlaskWorker as defined

    assert FlaskWorker is defined and issubclass(Worker, FlaskWorker)
    assert callable(FlaskGateway) and callable(get_packages) and callable(Logger)
    assert bis_twisted.__version__ == bis_twisted.LIB_VER
    assert 'FlaskWorker' in dir(bis_twisted)
    with pytest.raises(AttributeError):
        bis_twisted.NoSuchThing


@pytest.mark.parametrize('module', ['bis_twisted.model_server', 'bis_twisted.gateway.cli'])
def test_both_programs_run_as_modules(module):
    done = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert '--port' in done.stdout


# -- protocol: the child's flags, built and parsed from one table --------------------------------
def test_every_child_flag_survives_being_written_and_parsed():
    values = {'endpoints': 'eps', 'name': 'demo', 'server_class': 'demo_file', 'host': '10.0.0.1', 'port': 5003,
              'config_json': '{"A": 1}', 'path': '/predict', 'max_body_mb': 48.0, 'max_bodies_mb': 1536.0,
              'unix_socket': '@bis-1-5003', 'log_format': 'json', 'exit_with_parent': True, 'nice': 19}
    assert set(values) == {flag.name for flag in protocol.CHILD_FLAGS}
    argv = protocol.child_argv('python3', **values)
    assert argv[:3] == ['python3', '-m', protocol.MODEL_SERVER_MODULE]
    assert vars(protocol.parse_child_args(argv[3:])) == values


def test_a_unix_socket_flag_names_the_abstract_namespace_with_an_at_sign():
    assert protocol.unix_address('@bis-1-5003') == '\0bis-1-5003'
    assert protocol.unix_address('/run/bis/5003.sock') == '/run/bis/5003.sock'


def test_flags_left_out_take_their_defaults():
    parsed = protocol.parse_child_args(protocol.child_argv('python3', name='demo', port=0)[3:])
    assert parsed.endpoints == 'endpoints' and parsed.path == protocol.DEFAULT_EXECUTION_PATH
    assert parsed.exit_with_parent is False and parsed.max_body_mb is None


def test_a_flag_the_server_does_not_know_is_refused_when_written():
    with pytest.raises(TypeError, match='not a model server flag: colour'):
        protocol.child_argv('python3', name='demo', port=0, colour='red')
    with pytest.raises(TypeError, match='--port'):
        protocol.child_argv('python3', name='demo')


def test_the_child_environment_carries_the_entry_the_key_and_the_device():
    env = protocol.child_environment({'PATH': '/bin', protocol.DEVICE_VARIABLE: 'stale'}, {'NR_WORKERS': 2},
                                     'key-1', 1)
    assert json.loads(env[protocol.CONFIG_VARIABLE]) == {'NR_WORKERS': 2}
    assert env[protocol.CHILD_KEY_VARIABLE] == 'key-1'
    assert env['CUDA_VISIBLE_DEVICES'] == '1' and env[protocol.DEVICE_VARIABLE] == 'cuda:0'
    assert protocol.DEVICE_VARIABLE not in protocol.child_environment({protocol.DEVICE_VARIABLE: 'x'}, {}, None, None)


@pytest.mark.parametrize('value, ok', [(1, True), (8, True), (0, False), (-1, False), (True, False),
                                       ('2', False), (2.0, False), (None, False)])
def test_one_nr_workers_rule(value, ok):
    assert protocol.valid_nr_workers(value) is ok


def test_the_uptime_keeps_counting_hours_past_a_day():
    from bis_twisted.gateway.status import hms

    assert hms(24 * 3600 + 5) == '24:00:05'
    assert hms(-3) == '0:00:00'


# -- the one waiter helper ---------------------------------------------------------------------
def test_waiters_fire_together_and_a_cancelled_one_is_forgotten():
    waiters = Waiters()
    first, second, third = waiters.wait(), waiters.wait(), waiters.wait()
    second.cancel()
    second.addErrback(lambda f: f.trap(defer.CancelledError))
    assert len(waiters) == 2
    got = []
    first.addCallback(got.append)
    third.addCallback(got.append)
    waiters.fire('ready')
    assert got == ['ready', 'ready'] and len(waiters) == 0
    waiters.fire('again')  # nobody waits: nothing happens
    assert got == ['ready', 'ready']


# -- the model server's service tree ---------------------------------------------------------------
class _Events(MemoryReactorClock):
    def __init__(self, events):
        MemoryReactorClock.__init__(self)
        self.events = events

    def listenTCP(self, port, factory, backlog=50, interface=''):
        listening = MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)
        self.events.append('listening')
        listening.stopListening = lambda: self.events.append('port closed')
        return listening


class _Pool:
    size = 2

    def __init__(self, events):
        self.events = events
        self.idle = defer.Deferred()

    def when_idle(self):
        self.events.append('drain asked')
        return self.idle


class _Server:
    config = {}
    worker_class = type('DemoWorker', (), {})

    def __init__(self, events):
        from twisted.web.resource import Resource

        self.events = events
        self.pool = _Pool(events)
        self.loaded = defer.Deferred()
        self._resource = Resource()

    def resource(self):
        return self._resource

    def start(self):
        self.events.append('loading')
        return self.loaded


def test_the_model_server_listens_at_once_says_ready_once_loaded_and_stops_listening_before_draining(capsys):
    from bis_twisted.model_server.service import ModelServerService

    events = []
    reactor = _Events(events)
    server = _Server(events)
    args = protocol.parse_child_args(['--name', 'demo', '--port', '5003'])
    root = ModelServerService(args, server, reactor, max_body_mb=8)
    root.startService()
    assert events == ['listening', 'loading']
    assert protocol.READY_LINE not in capsys.readouterr().out  # not before the workers are loaded
    server.loaded.callback(None)
    assert '{} 5003'.format(protocol.READY_LINE) in capsys.readouterr().out
    stopped = root.stopService()
    assert events[2:] == ['port closed', 'drain asked']
    assert not stopped.called  # a request is still running
    server.pool.idle.callback(None)
    assert stopped.called and root.stopping


def test_a_worker_that_cannot_load_is_reported_with_its_file():
    from bis_twisted.model_server.pool import WorkerLoadError
    from bis_twisted.model_server.service import ModelServerService

    events = []
    server = _Server(events)
    args = protocol.parse_child_args(['--name', 'demo', '--port', '5003', '--endpoints', 'eps'])
    root = ModelServerService(args, server, _Events(events), max_body_mb=8)
    messages = []
    root.workers.failed.addCallback(messages.append)
    root.startService()
    server.loaded.errback(WorkerLoadError('KeyError: weights'))
    assert messages == [os.path.join('eps', 'demo.py') + ': KeyError: weights']


def test_the_code_speaks_of_itself_not_of_issues_or_documents_outside_the_repository():
    import pathlib
    import re

    cited = re.compile(r'\bissue \d+|\bAPI\.md\b|design-card|STYLE\.md|\.\./shared')
    found = ['{}:{}'.format(path.relative_to(ROOT), n) for path in pathlib.Path(ROOT, 'bis_twisted').rglob('*.py')
             for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1) if cited.search(line)]
    assert found == []


def test_a_socket_file_a_killed_server_left_is_replaced_and_another_file_is_not(tmp_path):
    import socket

    from twisted.internet.protocol import Factory

    from bis_twisted.model_server.service import _FreshUNIXEndpoint

    stale = str(tmp_path / 'stale.sock')
    left = socket.socket(socket.AF_UNIX)
    left.bind(stale)
    left.close()  # the file stays, as after a kill -9
    reactor = MemoryReactorClock()
    assert _FreshUNIXEndpoint(reactor, stale).listen(Factory()).called
    assert not os.path.exists(stale) and reactor.unixServers[0][0] == stale

    data = tmp_path / 'data.txt'
    data.write_text('not a socket')
    _FreshUNIXEndpoint(MemoryReactorClock(), str(data)).listen(Factory())
    assert data.read_text() == 'not a socket'


def test_the_ready_line_waits_for_the_unix_socket_too(capsys):
    from bis_twisted.model_server.service import ModelServerService

    events = []
    reactor = _Events(events)
    server = _Server(events)
    args = protocol.parse_child_args(['--name', 'demo', '--port', '5003', '--unix-socket', '@bis-1-5003'])
    root = ModelServerService(args, server, reactor, max_body_mb=8)
    root.startService()
    assert [entry[0] for entry in reactor.unixServers] == ['\0bis-1-5003']
    server.loaded.callback(None)
    assert '{} 5003'.format(protocol.READY_LINE) in capsys.readouterr().out


# -- the house drawn from the imports ---------------------------------------------------------------
def _layer(module):
    if module.startswith('bis_twisted.client'):
        return 'client'
    if module.startswith('bis_twisted.shared') or module in ('bis_twisted.protocol', 'bis_twisted.errors',
                                                               'bis_twisted._version'):
        return 'shared'
    if module.startswith('bis_twisted.gateway'):
        return 'gateway'
    if module.startswith('bis_twisted.model_server'):
        return 'model_server'
    if module in ('bis_twisted', 'bis_twisted.compat'):
        return 'face'
    return 'endpoint_api'  # worker, logger, notifications


def _imports():
    """``{(module, imported bis_twisted module)}`` of every import statement in the package,
    those inside functions too."""
    import ast
    found = set()
    for folder, _dirs, files in os.walk(os.path.join(ROOT, 'bis_twisted')):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
            package = module.rsplit('.', 1)[0]
            if module.endswith('.__init__'):
                module = package = module[:-len('.__init__')]
            with open(path, encoding='utf-8') as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split('.')
                        parts = parts[:len(parts) - node.level + 1]
                        targets = ['.'.join(parts + ([node.module] if node.module else []))]
                    else:
                        targets = [node.module or '']
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                found.update((module, target) for target in targets if target.startswith('bis_twisted'))
    return found


# what each part may import besides itself: face -> gateway -> shared/protocol, and
# model server -> endpoint API -> shared/protocol; the light client imports nothing of the rest
HOUSE = {'face': {'gateway', 'endpoint_api', 'shared'}, 'gateway': {'shared'}, 'model_server': {'endpoint_api', 'shared'},
         'endpoint_api': {'shared'}, 'shared': set(), 'client': set()}
# the user's code that runs in the gateway: a support process's class logs with the endpoint
# API's Logger; ``check --load`` imports an endpoint as its model server would, in its own process
CROSSINGS = {('bis_twisted.gateway.support', 'bis_twisted.logger'), ('bis_twisted.gateway.check', 'bis_twisted.logger'),
             ('bis_twisted.gateway.check', 'bis_twisted.model_server.loader')}


def test_the_house_drawn_from_the_imports_reads_top_to_bottom():
    wrong = sorted((module, target) for module, target in _imports()
                   if _layer(target) != _layer(module) and _layer(target) not in HOUSE[_layer(module)]
                   and (module, target) not in CROSSINGS)
    assert wrong == []
    assert CROSSINGS <= _imports()  # each crossing named is still there (else it goes from the list)
