"""Log lines without noise: no Twisted per-port lines (``GuardedSite starting on
'\\x00bis-...'``), no ``[name] [name]`` from a worker's ``log.P``."""

import pytest
from twisted.logger import LogLevel

from bis_twisted.shared.logfilter import child_line, is_port_chatter
from gateway_process import start_gateway
from procs import wait_until


def legacy(text, namespace='log_legacy'):
    return {'log_namespace': namespace, 'log_level': LogLevel.info, 'log_format': '{log_text}', 'log_text': text}


def test_port_chatter_is_recognised_and_nothing_else():
    assert is_port_chatter(legacy("GuardedSite starting on '\\x00bis-15727-1a5f357c-23457'"))
    assert is_port_chatter(legacy('GuardedSite starting on 5002'))
    assert is_port_chatter(legacy('(TCP Port 23456 Closed)'))
    assert is_port_chatter(legacy('(UNIX Port  bis-15897-1a5f357c-23457 Closed)'))
    assert not is_port_chatter(legacy('model starting on GPU 0'))  # not a port line: the words of a user
    assert not is_port_chatter(legacy('GuardedSite starting on 5002', namespace='my_endpoint'))
    assert not is_port_chatter(dict(legacy('(TCP Port 1 Closed)'), log_level=LogLevel.warn))


def test_a_child_line_names_its_namespace_once():
    line = child_line('dummy_model_demo1')
    assert line(legacy('[DUMA] loaded', namespace='dummy_model_demo1')) == '[DUMA] loaded\n'
    assert line(legacy('Main loop terminated.', namespace='twisted.internet.base')) == \
        '[twisted.internet.base] Main loop terminated.\n'
    assert line(legacy('something old')) == 'something old\n'


@pytest.mark.e2e
def test_the_gateways_output_has_no_port_chatter_and_no_doubled_prefix(processes, tmp_path):
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo1',
              'CONFIG_ENDPOINTS': {'dummy_model_demo1': {'NR_WORKERS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, use_twistd=False, ports=8)
    assert gateway.run('dummy_model_demo1', INPUT_VALUE=1).status == 200
    lines = wait_until(lambda: list(gateway.proc.stdout_lines),
                       lambda found: any('[DUMA]' in line for line in found), what='a [DUMA] line')
    assert not [line for line in lines if 'starting on' in line and 'Site' in line]
    assert not [line for line in lines if '[dummy_model_demo1] [dummy_model_demo1]' in line]
    assert [line for line in lines if '[dummy_model_demo1] [DUMA]' in line]
