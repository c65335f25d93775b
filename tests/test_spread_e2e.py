"""A URLS host resolving to several model servers, for real: four model servers on
127.0.0.2-5 (one port, as pods behind a headless Service), the gateway's fleet, client and
``AddressSpreader`` in this process with a resolver the test controls (the system's resolver
is not touched) and a Clock for the refresh, real HTTP to each server."""

import collections
import json
import socket

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.fleet import Fleet
from bis_twisted.gateway.proxy import ChildClient
from bis_twisted.gateway.spread import AddressSpreader
from bis_twisted.gateway.supervisor import Supervisor
from procs import READY_PATTERN, model_server_argv
from test_spread import FakeResolver

pytestmark = pytest.mark.e2e

ADDRESSES = ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']
REFRESH = 5.0


def port_free_on_all(addresses):
    """A port free on every address (the servers share it, as pods share a container port)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError('no port free on all of {}'.format(addresses))


@pytest.fixture(scope='module')
def servers(module_processes):
    """The four model servers, each with its own BIAS: an answer says which one it came from."""
    port = port_free_on_all(ADDRESSES)
    started = []
    for bias, address in enumerate(ADDRESSES):
        started.append(module_processes.start(model_server_argv(
            'dummy_model_demo2', host=address, port=port, config={'NR_WORKERS': 1, 'WEIGHT': 0, 'BIAS': bias}),
            name='model server at ' + address))
    for proc in started:
        proc.wait_for_line(READY_PATTERN, timeout=30)
    return port


async def answered_by(fleet, count, at_once):
    """Send ``count`` requests, ``at_once`` at a time; {address: requests it answered}."""
    by_bias = collections.Counter()
    for _ in range(count // at_once):
        answers = await defer.gatherResults([defer.Deferred.fromCoroutine(
            fleet.run('models', b'{"INPUT_VALUE": 1}')) for _ in range(at_once)])
        for answer in answers:
            assert answer.status == 200, answer.body
            result = answer.body['predict_result'] if isinstance(answer.body, dict) else json.loads(answer.body)['predict_result']
            bias = int(result['dummy_model_predict'].split('+ ')[1].split(' ')[0])
            by_bias[ADDRESSES[bias]] += 1
    return by_bias


def within_ten_percent_of_even(counts, addresses, total):
    even = total / len(addresses)
    return set(counts) == set(addresses) and all(abs(counts[a] - even) <= 0.1 * even for a in addresses)


@pytest_twisted.ensureDeferred
async def test_requests_spread_over_every_address_and_a_new_one_gets_its_share(servers, tmp_path):
    from twisted.internet import reactor

    config = parse_config({'CONFIG_ENDPOINTS': {'models': {
        'URLS': ['http://models.test:{}/run'.format(servers)], 'URLS_REFRESH': REFRESH, 'TIMEOUT': 30}}},
        'config_gateway.txt', str(tmp_path))
    client = ChildClient(reactor=reactor)
    fleet = Fleet(config, Supervisor(reactor=reactor), client, str(tmp_path), reactor=reactor)
    resolver = FakeResolver(models_test=ADDRESSES[:3])
    clock = Clock()
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    try:
        counts = await answered_by(fleet, 300, at_once=6)
        assert within_ten_percent_of_even(counts, ADDRESSES[:3], 300), counts

        resolver.names['models.test'] = list(ADDRESSES)  # a pod added behind the name
        clock.advance(REFRESH)  # the next refresh: URLS_REFRESH (10 s by default) after the last
        counts = await answered_by(fleet, 400, at_once=8)
        assert within_ten_percent_of_even(counts, ADDRESSES, 400), counts
    finally:
        spreader.stopService()
        await client.close()
