"""Feedback while model servers load: a log line when a load starts, one every 10 s while it
goes on (elapsed, RSS), one when it ends; ``/health`` answers "starting" from the first second
while the gateway waits for ``DEFAULT_SERVER``, and ``/ready`` 503."""

import time

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogPublisher, formatEvent

from bis_twisted.gateway.loading import LoadProgress
from bis_twisted.gateway.childspec import ChildSpec
from bis_twisted.gateway.supervisor import Supervisor
from fakes import ProcessReactor
from gateway_process import GATEWAY_READY, start_gateway
from procs import wait_until

SLOW_LOADER = '''
import os
import time

from bis_twisted import FlaskWorker


class SlowLoaderWorker(FlaskWorker):
    def _load_model(self):
        # loads until the test creates the file (or 60 s): the test decides when it ends
        deadline = time.monotonic() + 60
        while not os.path.exists(self.cfg_release_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.blob = bytearray(30 * 1024 * 1024)

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return 'loaded'

    def _post_process(self, pred):
        return pred
'''


def watched(rss=200 * 1024 * 1024):
    reactor = ProcessReactor()
    supervisor = Supervisor(reactor=reactor)
    progress = LoadProgress(supervisor, reactor=reactor, rss_of=lambda pid: rss)
    lines = []
    publisher = LogPublisher(lambda event: lines.append(formatEvent(event)))
    progress._log = progress._log.__class__(namespace='test', observer=publisher)
    progress.startService()
    return reactor, supervisor, progress, lines


def test_a_line_when_a_load_starts_every_10_s_while_it_goes_on_and_when_it_ends():
    reactor, supervisor, progress, lines = watched()
    supervisor.add(ChildSpec(name='big', argv=['python']))
    supervisor.startService()
    pid = reactor.child('big').pid
    assert lines == ['server big: loading started (pid {})'.format(pid)]
    reactor.advance(9.9)
    assert len(lines) == 1
    assert progress.loading() == {'big': pytest.approx(9.9)}
    reactor.advance(0.1)
    assert lines[-1] == 'server big: still loading after 0:00:10 (RSS 200 MB)'
    reactor.advance(10)
    reactor.advance(10)
    assert lines[-2:] == ['server big: still loading after 0:00:20 (RSS 200 MB)',
                          'server big: still loading after 0:00:30 (RSS 200 MB)']
    reactor.advance(12)
    reactor.ready('big')
    assert lines[-1] == 'server big: loaded in 0:00:42'
    assert progress.loading() == {}
    count = len(lines)
    reactor.advance(60)
    assert len(lines) == count  # the loop ended with the load


def test_a_child_that_exits_while_loading_ends_its_progress_with_a_warning_and_health_says_starting():
    reactor, supervisor, progress, lines = watched(rss=None)
    supervisor.add(ChildSpec(name='crashy', argv=['python']))
    supervisor.startService()
    progress.waiting_for = 'crashy'
    reactor.advance(10)
    assert lines[-1] == 'server crashy: still loading after 0:00:10 (RSS unknown)'
    assert progress.health() == {'STATUS': 'starting', 'WAITING_FOR': 'crashy', 'LOADING': {'crashy': '0:00:10'}}
    reactor.child('crashy').exit(ProcessTerminated(exitCode=1))
    assert lines[-1] == 'server crashy: exited after loading for 0:00:10, before it was ready'
    assert progress.health() == {'STATUS': 'starting', 'WAITING_FOR': 'crashy', 'LOADING': {}}
    progress.waiting_for = None
    assert progress.health() == {}


@pytest.mark.e2e
def test_health_answers_starting_from_the_first_second_of_a_long_load_with_progress_lines(processes, tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'slow_loader.py').write_text(SLOW_LOADER)
    release = tmp_path / 'release'
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'slow_loader', 'CONFIG_ENDPOINTS': {
        'slow_loader': {'NR_WORKERS': 1, 'RELEASE_FILE': str(release)}}}
    started = time.monotonic()
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints, use_twistd=False, ports=8,
                            wait=False)
    first = wait_until(lambda: gateway.get('/health'), lambda r: r.status == 200, timeout=20,
                       what='/health answering')
    body = first.json()
    assert body['STATUS'] == 'starting' and body['WAITING_FOR'] == 'slow_loader', body
    assert list(body['LOADING']) == ['slow_loader']
    ready = gateway.get('/ready')
    assert ready.status == 503 and ready.json()['NOT_READY'] == ['slow_loader']
    assert gateway.run('slow_loader').status == 503
    assert not any(GATEWAY_READY in line for line in gateway.proc.stdout_lines)

    # the load goes on for 20 s at least: a progress line at 10 s and at 20 s, each with RSS
    def progress_lines():
        return [line for line in gateway.proc.stdout_lines if 'server slow_loader: still loading after' in line]

    lines = wait_until(progress_lines, lambda found: len(found) >= 2, timeout=40, what='two progress lines')
    assert 'still loading after 0:00:10 (RSS ' in lines[0] and 'still loading after 0:00:20 (RSS ' in lines[1]
    later = gateway.get('/health').json()
    assert later['STATUS'] == 'starting' and later['LOADING']['slow_loader'] >= '0:00:20'
    assert any('server slow_loader: loading started (pid ' in line for line in gateway.proc.stdout_lines)

    release.write_text('go')
    gateway.proc.wait_for_line(GATEWAY_READY, timeout=30)
    gateway.proc.wait_for_line('server slow_loader: loaded in 0:00:', timeout=10)
    assert gateway.get('/health').json()['STATUS'] == 'OK' and 'LOADING' not in gateway.get('/health').json()
    assert gateway.get('/ready').status == 200
    assert gateway.run('slow_loader').json()['predict_result'] == 'loaded'
    assert time.monotonic() - started >= 20
