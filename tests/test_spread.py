"""A URLS host spread over all its addresses: ``AddressSpreader`` on a Clock with a resolver
the test controls, and the fleet's routing over the targets it makes. No socket."""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.task import Clock
from zope.interface import implementer

from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.fleet import Fleet
from bis_twisted.gateway.spread import AddressSpreader, AddressTarget, spreadable
from bis_twisted.gateway.supervisor import Supervisor


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers ``names[host]`` (a list of addresses); a host in ``pending`` waits for ever;
    a host not in ``names`` resolves to nothing (as a name the DNS does not know)."""

    def __init__(self, **names):
        self.names = {host.replace('_', '.'): addresses for host, addresses in names.items()}
        self.pending = set()
        self.asked = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics='TCP'):
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        if hostName in self.pending:
            return receiver
        for address in self.names.get(hostName, []):
            receiver.addressResolved(IPv4Address('TCP', address, portNumber))
            receiver.addressResolved(IPv4Address('TCP', address, portNumber))  # getaddrinfo repeats
        receiver.resolutionComplete()
        return receiver


class NoClient:
    def post_json(self, *args, **kwargs):
        raise AssertionError('no request is sent here')


def make_fleet(tmp_path, entry):
    config = parse_config({'CONFIG_ENDPOINTS': {'models': entry}}, 'config_gateway.txt', str(tmp_path))
    clock = Clock()
    return Fleet(config, Supervisor(reactor=clock), NoClient(), str(tmp_path), reactor=clock), clock


def active_bases(fleet):
    return [t.base_url for t in fleet.servers['models'].targets if t.active]


def test_only_http_urls_that_name_a_host_are_spread():
    assert spreadable('http://models:5003/run')
    assert not spreadable('http://10.0.0.1:5003/run')
    assert not spreadable('http://[::1]:5003/run')
    assert not spreadable('https://models:5003/run')  # the certificate names the host


def test_a_host_becomes_one_target_per_address_and_ties_take_turns(tmp_path):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://models.svc:5003/v1/run']})
    resolver = FakeResolver(models_svc=['10.0.0.1', '10.0.0.2', '10.0.0.3'])
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    assert active_bases(fleet) == ['http://10.0.0.1:5003', 'http://10.0.0.2:5003', 'http://10.0.0.3:5003']
    targets = [t for t in fleet.servers['models'].targets if t.active]
    assert all(t.run_url.endswith(b'/v1/run') for t in targets)  # the URL's path stays the execution path
    picked = [fleet.pick(fleet.servers['models']).base_url for _ in range(6)]
    assert sorted(picked) == sorted(active_bases(fleet) * 2)  # nothing in flight: each in turn
    spreader.stopService()


def test_an_address_added_to_the_name_gets_requests_after_the_next_refresh(tmp_path):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://models:5003/run'], 'URLS_REFRESH': 5})
    resolver = FakeResolver(models=['10.0.0.1', '10.0.0.2'])
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    resolver.names['models'].append('10.0.0.3')
    clock.advance(4)
    assert len(active_bases(fleet)) == 2  # not due yet
    clock.advance(1)
    assert active_bases(fleet)[-1] == 'http://10.0.0.3:5003'
    server = fleet.servers['models']
    assert {fleet.pick(server).base_url for _ in range(3)} == set(active_bases(fleet))
    spreader.stopService()


def test_a_vanished_address_leaves_the_rotation_and_goes_once_idle(tmp_path):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://models:5003/run'], 'URLS_REFRESH': 5})
    resolver = FakeResolver(models=['10.0.0.1', '10.0.0.2'])
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    busy = next(t for t in fleet.servers['models'].targets if getattr(t, 'address', None) == '10.0.0.2')
    busy.in_flight = 1
    resolver.names['models'] = ['10.0.0.1']
    clock.advance(5)
    assert active_bases(fleet) == ['http://10.0.0.1:5003']
    assert busy in fleet.servers['models'].targets  # its request is still answering
    busy.in_flight = 0
    clock.advance(5)
    assert busy not in fleet.servers['models'].targets
    spreader.stopService()


@pytest.mark.parametrize('failure', ['no address', 'hangs'])
def test_a_host_that_does_not_resolve_keeps_the_addresses_it_had(tmp_path, failure):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://models:5003/run'], 'URLS_REFRESH': 5})
    resolver = FakeResolver(models=['10.0.0.1', '10.0.0.2'])
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    if failure == 'no address':
        resolver.names['models'] = []
    else:
        resolver.pending.add('models')
    clock.advance(5)
    clock.advance(AddressSpreader.resolve_timeout)  # a hanging resolution times out
    assert active_bases(fleet) == ['http://10.0.0.1:5003', 'http://10.0.0.2:5003']
    spreader.stopService()


def test_before_the_first_resolution_the_host_name_serves(tmp_path):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://models:5003/run']})
    resolver = FakeResolver()
    resolver.pending.add('models')
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    assert active_bases(fleet) == ['http://models:5003']
    assert not any(isinstance(t, AddressTarget) for t in fleet.servers['models'].targets)
    spreader.stopService()


def test_addresses_and_names_are_left_alone(tmp_path):
    fleet, clock = make_fleet(tmp_path, {'URLS': ['http://10.9.0.1:7000/run', 'https://secure:7000/run']})
    resolver = FakeResolver(secure=['10.0.0.9'])
    spreader = AddressSpreader(fleet, reactor=clock, resolver=resolver)
    spreader.startService()
    assert resolver.asked == []
    assert active_bases(fleet) == ['http://10.9.0.1:7000', 'https://secure:7000']
    d = spreader.stopService()
    assert isinstance(d, defer.Deferred)


def test_urls_refresh_must_be_a_positive_number(tmp_path):
    from bis_twisted.errors import ConfigError
    with pytest.raises(ConfigError, match='URLS_REFRESH'):
        parse_config({'CONFIG_ENDPOINTS': {'m': {'URLS': ['http://m:1/run'], 'URLS_REFRESH': 0}}},
                     'config_gateway.txt', str(tmp_path))
