"""lograte.py: one log line per cause per second, with the count of the repeats."""

from twisted.internet import task
from twisted.logger import Logger, formatEvent

from bis_twisted.shared.lograte import RepeatLimiter


def limiter(log_events):
    clock = task.Clock()
    return clock, RepeatLimiter(Logger(namespace='flood'), clock=clock)


def lines(log_events):
    return [formatEvent(e) for e in log_events if e.get('log_namespace') == 'flood']


def test_a_flood_of_one_cause_writes_one_line_then_the_count(log_events):
    clock, repeats = limiter(log_events)
    for i in range(1888):
        repeats.emit('warn', ('demo', 503), 'request {rid} to demo: 503', rid=i, described='requests to demo: 503')
        clock.advance(0.0005)  # 1,888 in about a second
    assert lines(log_events) == ['request 0 to demo: 503']
    clock.advance(1)
    assert lines(log_events) == ['request 0 to demo: 503', '1887 more like this in the last 1s: requests to demo: 503']
    assert log_events[-1]['log_level'].name == 'warn'


def test_a_count_whose_timer_runs_late_is_written_before_the_next_period_starts(log_events):
    clock, repeats = limiter(log_events)
    for i in range(100):
        repeats.emit('warn', 'cause', 'call {n}', n=i, described='calls')
    # the reactor is busy: the period ends at 1.0, its timer has not run when the next call comes
    clock.rightNow = 1.2
    repeats.emit('warn', 'cause', 'call {n}', n=100, described='calls')
    clock.advance(2)
    assert lines(log_events) == ['call 0', '99 more like this in the last 1s: calls', 'call 100']


def test_each_cause_has_its_own_window_and_a_quiet_cause_writes_every_line(log_events):
    clock, repeats = limiter(log_events)
    repeats.emit('warn', 'a', 'a 1')
    repeats.emit('warn', 'b', 'b 1')
    clock.advance(1.5)
    repeats.emit('warn', 'a', 'a 2')  # the period is over: written, nothing to summarize
    clock.advance(5)
    assert lines(log_events) == ['a 1', 'b 1', 'a 2']


def test_flush_writes_the_pending_counts(log_events):
    clock, repeats = limiter(log_events)
    for _ in range(3):
        repeats.emit('info', 'x', 'x happened')
    repeats.flush()
    assert lines(log_events) == ['x happened', '2 more like this in the last 1s: x happened']
    clock.advance(2)
    assert len(lines(log_events)) == 2


def test_forgotten_causes_do_not_pile_up(log_events):
    clock, repeats = limiter(log_events)
    repeats.max_causes = 10
    for i in range(100):
        repeats.emit('info', i, 'cause {i}', i=i)
        clock.advance(2)
    assert len(repeats._windows) <= 10
    assert len(lines(log_events)) == 100
