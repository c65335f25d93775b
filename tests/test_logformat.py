"""The JSON log format: events as JSON lines, a child's output wrapped or passed through."""

import io
import json

import pytest
from twisted.logger import LogLevel, Logger, LogPublisher
from twisted.python.failure import Failure

from bis_twisted.gateway import child_output
from bis_twisted.gateway.cli import configure_log_format, options_from_env
from bis_twisted.protocol import child_argv, parse_child_args
from bis_twisted.shared import logformat


@pytest.fixture
def json_format():
    logformat.configure(logformat.JSON)
    yield
    logformat.configure(logformat.TEXT)
    logformat.set_trace_fields(None)


def logged(observer_format, emit):
    out = io.StringIO()
    publisher = LogPublisher(logformat.file_observer(out, observer_format))
    emit(Logger(namespace='bis.test', observer=publisher))
    return out.getvalue()


def test_an_event_is_one_json_line_with_time_level_logger_message_and_context(json_format):
    text = logged(logformat.JSON, lambda log: log.warn('request {rid}: stream cut after {n} chunks',
                                                       rid='r-1', n=3, endpoint='demo', worker_id=2))
    [line] = text.splitlines()
    record = json.loads(line)
    assert record['level'] == 'warn' and record['logger'] == 'bis.test'
    assert record['message'] == 'request r-1: stream cut after 3 chunks'
    assert record['request_id'] == 'r-1' and record['endpoint'] == 'demo' and record['worker_id'] == 2
    assert record['time'].endswith('Z') and 'T' in record['time']


def test_a_failure_keeps_its_traceback_inside_the_one_line(json_format):
    def emit(log):
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure('hook failed', Failure(), request_id='r-2')
    [line] = logged(logformat.JSON, emit).splitlines()
    record = json.loads(line)
    assert record['level'] == 'critical' and 'ZeroDivisionError' in record['error']
    assert record['request_id'] == 'r-2'


def test_text_stays_the_default_format():
    assert logformat.current() == logformat.TEXT
    text = logged(None, lambda log: log.info('hello {who}', who='you'))
    assert 'hello you' in text and not text.startswith('{')


def test_trace_fields_come_from_the_current_span_when_the_event_has_none(json_format):
    logformat.set_trace_fields(lambda: {'trace_id': 'ab' * 16, 'span_id': 'cd' * 8})
    record = json.loads(logged(logformat.JSON, lambda log: log.info('x')))
    assert record['trace_id'] == 'ab' * 16 and record['span_id'] == 'cd' * 8


def test_a_childs_print_and_progress_and_traceback_are_wrapped(json_format):
    printed = json.loads(child_output.file_line('demo', 1, 'hello from _predict', now=0.0))
    assert printed == {'time': '1970-01-01T00:00:00.000000Z', 'level': 'info', 'logger': 'stdout',
                       'message': 'hello from _predict', 'endpoint': 'demo'}
    error = json.loads(child_output.file_line('demo', 2, 'Traceback (most recent call last):', now=0.0))
    assert error['logger'] == 'stderr' and error['level'] == 'warn'
    looks_like_json = json.loads(child_output.file_line('demo', 1, '{"not": "a log record"}', now=0.0))
    assert looks_like_json['message'] == '{"not": "a log record"}'


def test_a_childs_own_json_record_is_kept_with_its_endpoint(json_format):
    line = json.dumps({'time': '2026-01-01T00:00:00Z', 'level': 'warn', 'logger': 'Demo', 'message': 'm',
                       'request_id': 'r-3'})
    record = json.loads(child_output.file_line('demo', 1, line))
    assert record == dict(json.loads(line), endpoint='demo')


def test_the_gateway_relays_a_childs_record_with_its_level_and_request_id(json_format):
    events = []
    log = Logger(namespace='bis.child', observer=events.append)
    child_output.relay(log, 'demo', 1, json.dumps({'time': 't', 'level': 'error', 'logger': 'Demo',
                                                   'message': 'boom', 'request_id': 'r-4'}))
    child_output.relay(log, 'demo', 1, 'a plain print')
    record = logformat.event_record(events[0])
    assert events[0]['log_level'] == LogLevel.error
    assert record['message'] == '[demo] boom' and record['request_id'] == 'r-4' and record['endpoint'] == 'demo'
    assert logformat.event_record(events[1])['message'] == '[demo] a plain print'


def test_text_format_writes_the_childs_line_behind_a_timestamp():
    assert child_output.file_line('demo', 1, 'hi').endswith(' hi\n')


def test_the_environment_beats_the_config_and_a_bad_value_is_refused(tmp_path):
    config = tmp_path / 'c.json'
    config.write_text(json.dumps({'LOG_FORMAT': 'json', 'CONFIG_ENDPOINTS': {}}))
    options = options_from_env({}, config=str(config))
    try:
        configure_log_format(options, environ={})
        assert logformat.current() == logformat.JSON
        configure_log_format(options, environ={'BIS_LOG_FORMAT': 'text'})
        assert logformat.current() == logformat.TEXT
        with pytest.raises(SystemExit) as exited:
            configure_log_format(options, environ={'BIS_LOG_FORMAT': 'yaml'})
        assert exited.value.code == 2
    finally:
        logformat.configure(logformat.TEXT)


def test_the_child_learns_the_format_from_its_flag():
    argv = child_argv('python', name='demo', port=0, log_format='json')
    assert parse_child_args(argv[3:]).log_format == 'json'
    assert parse_child_args(child_argv('python', name='demo', port=0)[3:]).log_format is None


def test_a_text_line_is_twisteds_own_byte_for_byte_with_its_time_made_once_a_second():
    import time

    from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
    from twisted.python.failure import Failure

    def twisted_line(event):
        return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))

    now = time.time()
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    events = [
        {'log_format': logformat.LINE_FORMAT, 'access_line': 'access 127.0.0.1 POST /run m 200 9B 1.0ms rid=r',
         'log_time': now, 'log_namespace': 'bis_twisted.access', 'log_level': LogLevel.info},
        {'log_format': '{a} and {b}', 'a': 1, 'b': 'two', 'log_time': now + 0.5, 'log_namespace': 'x',
         'log_level': LogLevel.warn},
        {'log_format': 'two\nlines', 'log_time': now + 1, 'log_system': 'sys'},
        {'log_format': logformat.LINE_FORMAT, 'access_line': 'a made line', 'log_time': now + 2,
         'log_failure': failure, 'log_namespace': 'y', 'log_level': LogLevel.error},
        {'log_format': logformat.LINE_FORMAT, 'access_line': 'made\nover two', 'log_time': now + 3},
        {'log_format': 'no time'},
    ]
    for event in events:
        assert logformat.text_line(event) == twisted_line(event), event
