"""The supervisor's logic on a MemoryReactor + Clock (the idea of Twisted's test_procmon):
spawns are recorded, exits injected, time advanced by hand."""

import signal

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated

from bis_twisted.server import READY_LINE
from bis_twisted.supervisor import ChildSpec, Supervisor
from fakes import ProcessReactor


@pytest.fixture
def reactor():
    return ProcessReactor()


def make_supervisor(reactor, *names, start=True):
    supervisor = Supervisor(reactor=reactor)
    for name in names:
        supervisor.add(ChildSpec(name=name, argv=['python', '-m', 'x', name]), start=start)
    return supervisor


def last_process(reactor):
    return reactor.spawned[-1]


def test_start_spawns_each_wanted_child_with_stdin_pipe_kept(reactor):
    supervisor = make_supervisor(reactor, 'a', 'b')
    supervisor.add(ChildSpec(name='disabled', argv=['python']), start=False)
    supervisor.startService()
    assert [p.args[-1] for p in reactor.spawned] == ['a', 'b']
    # stdin is a pipe the gateway holds: the child exits when it closes
    assert reactor.spawned[0].child_fds == {0: 'w', 1: 'r', 2: 'r'}
    assert supervisor.status('disabled').running is False


def test_ready_line_marks_child_ready_and_fires_waiters(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    waiter = supervisor.when_ready('a')
    assert not waiter.called and not supervisor.is_ready('a')
    proto = last_process(reactor).proto
    proto.childDataReceived(1, b'log line\n' + READY_LINE.encode() + b' 5003\n')
    assert supervisor.is_ready('a')
    assert waiter.result == 'a'
    assert supervisor.status('a').port == 5003


def test_ready_line_split_across_reads_is_still_seen(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    proto = last_process(reactor).proto
    proto.childDataReceived(1, READY_LINE.encode()[:5])
    assert not supervisor.is_ready('a')
    proto.childDataReceived(1, READY_LINE.encode()[5:] + b' 7\n')
    assert supervisor.is_ready('a')


def test_child_that_exits_is_restarted_after_delay_with_count_and_reason(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    first = last_process(reactor)
    first.proto.childDataReceived(2, b'Traceback...\nValueError: boom\n')
    first.exit(ProcessTerminated(exitCode=3))
    status = supervisor.status('a')
    assert status.running is False and status.restarts == 1
    assert status.last_error == 'exit code 3: ValueError: boom'
    assert len(reactor.spawned) == 1
    reactor.advance(Supervisor.minRestartDelay)
    assert len(reactor.spawned) == 2
    assert supervisor.status('a').running is True


def test_restart_delay_doubles_while_crashing_and_resets_after_threshold(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    delays = []
    for _ in range(6):
        last_process(reactor).exit(ProcessTerminated(exitCode=1))
        delays.append(supervisor.status('a').next_restart_in)
        reactor.advance(delays[-1])
    assert delays == pytest.approx([min(Supervisor.minRestartDelay * 2 ** i, Supervisor.maxRestartDelay) for i in range(6)])
    # a child that lived past the threshold starts again after the minimum delay
    reactor.advance(Supervisor.threshold + 1)
    last_process(reactor).exit(ProcessTerminated(exitCode=1))
    assert supervisor.status("a").next_restart_in == pytest.approx(Supervisor.minRestartDelay)


def test_deliberate_stop_is_not_restarted_and_start_child_brings_it_back(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    process = last_process(reactor)
    stopped = supervisor.stop_child('a')
    assert process.signals[0] == 'TERM'
    assert stopped.called
    reactor.advance(60)
    assert len(reactor.spawned) == 1
    assert supervisor.status('a').wanted is False
    supervisor.start_child('a')
    assert len(reactor.spawned) == 2


def test_stop_escalates_to_kill_after_kill_time(reactor):
    reactor.obey_signals = False  # a child that ignores TERM
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    process = last_process(reactor)
    stopped = supervisor.stop_child('a')
    reactor.advance(Supervisor.killTime - 0.1)
    assert process.signals == ['TERM', signal.SIGCONT]  # CONT: a SIGSTOP-ed child must see the TERM
    reactor.advance(0.2)
    assert process.signals == ['TERM', signal.SIGCONT, 'KILL']
    assert not stopped.called
    process.exit(ProcessTerminated(signal=9))
    assert stopped.called


def test_restart_child_kills_now_and_reports_why(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    process = last_process(reactor)
    supervisor.restart_child('a', 'did not answer 3 pings')
    assert process.signals == ['KILL']
    status = supervisor.status('a')
    assert status.last_error == 'did not answer 3 pings' and status.restarts == 1
    reactor.advance(Supervisor.minRestartDelay)
    assert len(reactor.spawned) == 2


def test_stop_service_stops_every_child_and_restarts_none(reactor):
    supervisor = make_supervisor(reactor, 'a', 'b')
    supervisor.startService()
    done = supervisor.stopService()
    assert done.called
    reactor.advance(60)
    assert len(reactor.spawned) == 2
    assert not supervisor.status('a').running and not supervisor.status('b').running


def test_clean_exit_is_restarted_too_while_wanted(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    last_process(reactor).exit(ProcessDone(0))
    assert supervisor.status('a').last_error == 'exit code 0'
    reactor.advance(Supervisor.minRestartDelay)
    assert len(reactor.spawned) == 2
