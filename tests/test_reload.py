"""``Fleet.reload`` on a ``ProcessReactor`` (MemoryReactor + Clock): a real ``Supervisor`` with
fake children the test makes ready or exit, a fake HTTP client whose answers the test fires."""

from twisted.internet import defer
from twisted.internet.error import ProcessTerminated

from bis_twisted.errors import Conflict, ReloadFailed
from fakes import failure_of, result_of, send


def reload(fleet, name='demo'):
    return defer.Deferred.fromCoroutine(fleet.reload(fleet.servers[name]))


def test_new_process_takes_new_requests_once_ready_and_the_old_stops_after_its_answers(make_fleet, reactor,
                                                                                        children):
    fleet = make_fleet({'demo': {}})
    assert fleet.servers['demo'].config.ports == (5003,) and fleet.servers['demo'].config.spare_ports == (5004,)
    reactor.ready('demo')
    busy = send(fleet)
    done = reload(fleet)
    args = reactor.child('demo+').args
    assert args[args.index('--port') + 1] == '5004'  # beside the old one, on the spare port
    send(fleet)  # the new one still loads: the old one serves
    assert children.ports == [5003, 5003]
    reactor.ready('demo+')
    third = send(fleet)
    assert children.ports[-1] == 5004
    assert not done.called and reactor.child('demo').signals == []  # it owes two answers
    children.calls[0].answer()
    assert reactor.child('demo').signals == []
    children.calls[1].answer()
    assert reactor.child('demo').signals == ['TERM']  # drains the rest, its answers delivered
    assert result_of(done) == 1 and result_of(busy).status == 200
    children.calls[2].answer()
    assert result_of(third).status == 200
    # the next reload goes back to the first port
    done = reload(fleet)
    reactor.ready('demo')
    assert result_of(done) == 1 and reactor.child('demo+').signals == ['TERM']
    send(fleet)
    assert children.ports[-1] == 5003


def test_new_code_that_fails_to_load_leaves_the_old_serving_and_is_not_retried(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {}})
    reactor.ready('demo')
    done = reload(fleet)
    new = reactor.child('demo+')
    new.proto.childDataReceived(2, b'bis-server demo: endpoints/demo.py: _load_model failed: OSError: no GPU\n')
    new.exit(ProcessTerminated(exitCode=3))
    error = failure_of(done, ReloadFailed)
    assert error.status == 500
    assert error.message == ("server 'demo': the new process did not start, the old one keeps serving: exit code 3: "
                             "bis-server demo: endpoints/demo.py: _load_model failed: OSError: no GPU")
    reactor.advance(120)
    assert [p.proto.name for p in reactor.spawned] == ['demo', 'demo+']  # not retried
    send(fleet)
    assert children.ports == [5003] and reactor.child('demo').signals == []
    assert not fleet.supervisor.status('demo+').wanted


def test_load_timeout_of_the_new_process_fails_the_reload(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'LOAD_TIMEOUT': 30}})
    reactor.ready('demo')
    done = reload(fleet)
    reactor.advance(30)
    error = failure_of(done, ReloadFailed)
    assert 'did not become ready within LOAD_TIMEOUT (30s)' in error.message
    assert reactor.child('demo+').signals == ['KILL'] and reactor.child('demo').signals == []


def test_replicas_are_replaced_one_at_a_time_and_a_second_reload_waits_its_turn(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'REPLICAS': 2}})
    assert fleet.servers['demo'].config.ports == (5003, 5004)
    assert fleet.servers['demo'].config.spare_ports == (5005, 5006)
    reactor.ready('demo#0', 'demo#1')
    done = reload(fleet)
    assert failure_of(reload(fleet), Conflict).status == 409
    assert [p.proto.name for p in reactor.spawned] == ['demo#0', 'demo#1', 'demo#0+']
    reactor.ready('demo#0+')
    assert reactor.child('demo#0').signals == ['TERM']
    assert [p.proto.name for p in reactor.spawned][-1] == 'demo#1+'  # only now the second
    assert reactor.child('demo#1').signals == []
    reactor.ready('demo#1+')
    assert result_of(done) == 2 and reactor.child('demo#1').signals == ['TERM']
    for _ in range(4):
        send(fleet)
    assert sorted(set(children.ports)) == [5005, 5006]


def test_a_stopped_server_is_not_started_by_a_reload(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {'DISABLED': True}})
    assert result_of(reload(fleet)) == 0
    assert reactor.spawned == []


def test_the_load_error_read_after_the_exit_is_in_the_answer(make_fleet, reactor, children):
    fleet = make_fleet({'demo': {}})
    reactor.ready('demo')
    done = reload(fleet)
    new = reactor.child('demo+')
    new.exit(ProcessTerminated(exitCode=3), pipes_closed=False)  # the exit is seen first
    assert not done.called
    new.proto.childDataReceived(2, b'bis-server demo: ImportError: No module named torch\n')
    new.close_pipes()
    error = failure_of(done, ReloadFailed)
    assert error.message.endswith('exit code 3: bis-server demo: ImportError: No module named torch')
