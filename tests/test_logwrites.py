"""``LinesPerTurn`` on a Clock: the lines of one reactor turn leave in one write; a line from
another thread, or while the reactor does not run, at once; the shutdown writes what is held."""

import io
import threading

from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher

from bis_twisted.shared import logformat
from bis_twisted.shared.logwrites import LinesPerTurn


class TurnClock(Clock):
    """A Clock that runs (once ``start``), with the system-event triggers LinesPerTurn uses."""

    def __init__(self):
        Clock.__init__(self)
        self.running = False
        self._when_running = []
        self.triggers = []

    def callWhenRunning(self, f, *args):
        self._when_running.append((f, args))

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f, args))

    def start(self):
        self.running = True
        for f, args in self._when_running:
            f(*args)

    def stop(self):
        self.running = False
        for phase, event, f, args in self.triggers:
            if (phase, event) == ('after', 'shutdown'):
                f(*args)


class Writes(io.StringIO):
    def __init__(self):
        io.StringIO.__init__(self)
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return io.StringIO.write(self, text)


def logged_to(out):
    publisher = LogPublisher(logformat.file_observer(out, logformat.TEXT))
    return Logger(namespace='test', observer=publisher)


def test_the_lines_of_one_turn_leave_in_one_write_at_the_next_turn():
    clock, out = TurnClock(), Writes()
    lines = LinesPerTurn(out, clock)
    clock.start()
    log = logged_to(lines)
    for i in range(3):
        log.info('line {i}', i=i)
    assert out.writes == []  # held until the reactor's next turn
    clock.advance(0)
    assert len(out.writes) == 1 and [line.split('] ')[1] for line in out.getvalue().splitlines()] == [
        'line 0', 'line 1', 'line 2']
    log.info('line 3')
    clock.advance(0)
    assert len(out.writes) == 2 and out.getvalue().endswith('line 3\n')


def test_a_line_from_another_thread_or_while_the_reactor_does_not_run_is_written_at_once():
    clock, out = TurnClock(), Writes()
    lines = LinesPerTurn(out, clock)
    log = logged_to(lines)
    log.info('before the reactor runs')
    assert len(out.writes) == 1
    clock.start()
    log.info('held')
    worker = threading.Thread(target=lambda: log.info('from a worker thread'))
    worker.start()
    worker.join()
    assert len(out.writes) == 2 and out.writes[-1].endswith('from a worker thread\n')
    clock.stop()  # the shutdown writes what is held
    assert len(out.writes) == 3 and out.writes[-1].endswith('held\n')
    log.info('after the stop')
    assert len(out.writes) == 4


def test_a_binary_file_gets_utf8():
    clock, out = TurnClock(), io.BytesIO()
    lines = LinesPerTurn(out, clock)
    clock.start()
    logged_to(lines).info('é')
    clock.advance(0)
    assert out.getvalue().decode('utf-8').endswith('é\n')


def test_one_observer_writes_the_same_lines_to_each_of_its_files():
    clock, out, also_text, also_binary = TurnClock(), Writes(), Writes(), io.BytesIO()
    lines = LinesPerTurn(out, clock, also=(also_text, also_binary))
    clock.start()
    log = logged_to(lines)
    log.info('one')
    log.info('two é')
    clock.advance(0)

    assert len(out.writes) == 1 and len(also_text.writes) == 1  # the turn's lines in one write to each
    assert out.getvalue() == also_text.getvalue() == also_binary.getvalue().decode('utf-8')
    assert [line.split('] ')[1] for line in out.getvalue().splitlines()] == ['one', 'two é']
