"""The supervisor's logic on a MemoryReactor + Clock (the idea of Twisted's test_procmon):
spawns are recorded, exits injected, time advanced by hand."""

import os
import signal

import psutil
import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated

from bis_twisted.protocol import READY_LINE
from bis_twisted.gateway.childspec import ChildSpec
from bis_twisted.gateway.supervisor import Supervisor
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


# -- what real endpoints do -----------------------------------------------------------------------
def test_exit_is_seen_when_the_process_exits_though_a_helper_holds_its_pipes(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    reactor.ready('a')
    first = last_process(reactor)
    first.exit(ProcessTerminated(exitCode=1), pipes_closed=False)  # a helper still holds stdout
    status = supervisor.status('a')
    assert status.running is False and status.pid is None and status.restarts == 1
    # the helper is in the child's process group: it goes with it
    assert reactor.group_signals == [(first.group, 'KILL')]
    reactor.advance(Supervisor.minRestartDelay)
    assert len(reactor.spawned) == 2 and supervisor.status('a').running
    first.close_pipes()  # late: changes nothing
    assert supervisor.status('a').running and len(reactor.spawned) == 2


def test_stop_signals_the_whole_process_group(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    process = last_process(reactor)
    stopped = supervisor.stop_child('a')
    assert process.signals[0] == 'TERM' and stopped.called
    assert process.args[0].endswith('setsid')  # each child leads a group of its own


def test_failed_spawn_is_an_exit_retried_with_backoff_and_stop_still_completes(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    reactor.ready('a')
    reactor.spawn_error = OSError(24, 'Too many open files')
    last_process(reactor).exit(ProcessTerminated(signal=9))
    reactor.advance(Supervisor.minRestartDelay)  # the restart's spawn fails
    status = supervisor.status('a')
    assert status.running is False and status.pid is None
    assert status.last_error == 'could not start the process: [Errno 24] Too many open files'
    assert status.next_restart_in == pytest.approx(Supervisor.minRestartDelay * 2)
    assert status.state == 'restarting'
    reactor.spawn_error = None  # descriptors free again: the next try serves
    reactor.advance(status.next_restart_in)
    assert supervisor.status('a').running
    reactor.spawn_error = OSError(24, 'Too many open files')
    last_process(reactor).exit(ProcessTerminated(signal=9))
    reactor.advance(Supervisor.minRestartDelay * 4)
    assert supervisor.restart_child('a', 'hung').called  # no process: nothing to kill
    assert supervisor.stop_child('a').called
    assert supervisor.stopService().called


def test_child_that_loads_past_its_load_timeout_is_restarted_saying_so(reactor):
    supervisor = Supervisor(reactor=reactor)
    supervisor.add(ChildSpec(name='slow', argv=['python'], load_timeout=60))
    supervisor.startService()
    reactor.advance(59)
    assert len(reactor.spawned) == 1  # loading, not hung
    reactor.advance(1)
    assert reactor.spawned[0].signals == ['KILL']
    assert supervisor.status('slow').last_error == 'did not become ready within LOAD_TIMEOUT (60s)'
    reactor.advance(Supervisor.minRestartDelay)
    reactor.ready('slow')
    reactor.advance(600)  # ready: the timer is gone
    assert len(reactor.spawned) == 2 and supervisor.is_ready('slow')


def test_child_failing_before_ready_five_times_is_failed_and_still_retried(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    for i in range(Supervisor.crash_loop_after):
        assert supervisor.status('a').state in ('starting', 'restarting')
        last_process(reactor).proto.childDataReceived(2, b'ImportError: no module named torch\n')
        last_process(reactor).exit(ProcessTerminated(exitCode=2))
        reactor.advance(supervisor.status('a').next_restart_in)
    status = supervisor.status('a')
    assert status.failed and status.state == 'failed'
    assert status.last_error == 'exit code 2: ImportError: no module named torch'
    assert len(reactor.spawned) == Supervisor.crash_loop_after + 1  # still retried
    reactor.ready('a')
    assert not supervisor.status('a').failed and supervisor.status('a').state == 'ready'


def test_last_error_is_short_and_on_one_line(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    last_process(reactor).proto.childDataReceived(2, b'RuntimeError: ' + b'x' * 20000 + b'\n')
    last_process(reactor).exit(ProcessTerminated(exitCode=1))
    assert len(supervisor.status('a').last_error) <= 300


def test_stderr_read_after_the_exit_still_names_the_error(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    process = last_process(reactor)
    process.exit(ProcessTerminated(exitCode=1), pipes_closed=False)
    process.proto.childDataReceived(2, b'Traceback...\nKeyError: weights\n')
    process.close_pipes()
    assert supervisor.status('a').last_error == 'exit code 1: KeyError: weights'


def test_a_child_left_by_a_previous_gateway_is_ended_at_start(reactor, tmp_path):
    import subprocess
    import sys
    leftover = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', 'bis_twisted.model_server',
                                 '--name', 'a'], start_new_session=True)
    stranger = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)
    try:
        (tmp_path / 'a.pid').write_text('{}\n'.format(leftover.pid))
        (tmp_path / 'b.pid').write_text('{}\n'.format(stranger.pid))  # not ours: left alone
        supervisor = Supervisor(reactor=reactor, pid_dir=str(tmp_path))
        for name in ('a', 'b'):
            supervisor.add(ChildSpec(name=name, argv=['python']))
        supervisor.startService()
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None
        assert (tmp_path / 'a.pid').read_text() == '{}\n'.format(reactor.child('a').pid)
    finally:
        for proc in (leftover, stranger):
            proc.kill()
            proc.wait()


def test_a_child_of_another_running_gateway_that_shares_the_cache_is_left_alone(reactor, tmp_path):
    import subprocess
    import sys
    # a "gateway" (its command names the gateway's module) whose child runs the model server
    parent = subprocess.Popen(
        [sys.executable, '-c', 'import subprocess, sys, time; child = subprocess.Popen([sys.executable, "-c", '
         '"import time; time.sleep(120)", "bis_twisted.model_server", "--name", "a"]); print(child.pid, flush=True); '
         'time.sleep(120)', '-m', 'bis_twisted.gateway.cli'], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child_pid = int(parent.stdout.readline())
        (tmp_path / 'a.pid').write_text('{}\n'.format(child_pid))
        supervisor = Supervisor(reactor=reactor, pid_dir=str(tmp_path))
        supervisor.add(ChildSpec(name='a', argv=['python']))
        supervisor.startService()
        assert psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


# -- child output ----------------------------------------------------------------------------------
from bis_twisted.gateway.child_process import OutputLines  # noqa: E402


def test_output_splits_on_newline_and_carriage_return_and_cuts_long_lines():
    lines = OutputLines(max_length=10)
    assert lines.feed(b'one\ntw') == [(b'one', 'line')]
    assert lines.feed(b'o\r 10%\r 20%\n') == [(b'two', 'progress'), (b' 10%', 'progress'), (b' 20%', 'line')]
    assert lines.feed(b'x' * 25) == [(b'x' * 10, 'cut')]
    assert lines.feed(b'x' * 25 + b'\nnext\n') == [(b'next', 'line')]
    assert lines.feed(b'tail') == [] and lines.flush() == [(b'tail', 'line')]


def test_twenty_megabytes_of_progress_bar_log_a_few_lines_in_bounded_memory(reactor):
    supervisor = make_supervisor(reactor, 'a')
    supervisor.startService()
    proto = last_process(reactor).proto
    logged = []
    proto._line = lambda fd, line: logged.append(line)
    bar = b'\r' + b' 45%|' + b'#' * 40 + b'| 45/100 [00:01<00:02, 30.1it/s]'
    chunk = bar * (65536 // len(bar))
    for _ in range(20 * 2 ** 20 // len(chunk)):
        proto.childDataReceived(2, chunk)
    reactor.advance(1.0)
    proto.childDataReceived(2, b'\rdone\n')
    assert logged[0].startswith(' 45%') and logged[-1] == 'done' and len(logged) <= 3
    assert len(proto._streams[2]._buffer) <= 8192
