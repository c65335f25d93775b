"""security.py: the admin rule (who may call the admin routes)."""

import json

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import formatEvent
from twisted.web.test.requesthelper import DummyRequest

from bis_twisted.errors import BisError, ConfigError, Forbidden, Unauthorized, UnsupportedMediaType
from bis_twisted.shared.security import AdminGuard, admin_token, is_loopback
from bis_twisted.shared.web import error_answer, write_json
from fakes import result_of

TOKEN = 's3cr3t-Admin-T0ken-value'


def dummy_request(client, path=b'/shutdown'):
    request = DummyRequest([path.lstrip(b'/')])
    request.client = client  # DummyRequest's `client=` argument is not stored (Twisted 26.10)
    request.path = path  # a real Request has it; DummyRequest does not
    return request


def admin_request(host='127.0.0.1', authorization=None, path=b'/shutdown'):
    request = dummy_request(IPv4Address('TCP', host, 40123), path)
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b'authorization', [authorization])
    return request


def refusals(events):
    return [formatEvent(e) for e in events if 'refused' in (e.get('log_format') or '')]


@pytest.mark.parametrize('host', ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1', '::1%lo'])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize('host', ['10.0.0.5', '172.17.0.1', '::ffff:10.0.0.5', 'fe80::1',
                                  '0.0.0.0', 'localhost', '', None])
def test_non_loopback_hosts(host):
    assert not is_loopback(host)


def test_loopback_client_without_token_is_served():
    AdminGuard().check(admin_request('127.0.0.1'))
    AdminGuard().check(dummy_request(IPv6Address('TCP', '::1', 40123)))


def test_remote_client_without_token_is_forbidden(log_events):
    with pytest.raises(Forbidden) as caught:
        AdminGuard().check(admin_request('10.1.2.3'))
    assert caught.value.status == 403
    assert 'BIS_ADMIN_TOKEN' in caught.value.message and '/shutdown' in caught.value.message
    [logged] = refusals(log_events)
    assert '10.1.2.3' in logged and '/shutdown' in logged


def test_unix_socket_client_without_token_is_forbidden():
    with pytest.raises(Forbidden):
        AdminGuard().check(dummy_request(UNIXAddress(b'/tmp/bis.sock')))


def test_empty_token_counts_as_unset():
    guard = AdminGuard('')
    assert not guard.token_required
    guard.check(admin_request('127.0.0.1'))


@pytest.mark.parametrize('host', ['127.0.0.1', '10.1.2.3'])
def test_with_token_a_request_without_authorization_is_unauthorized(host, log_events):
    request = admin_request(host)
    with pytest.raises(Unauthorized) as caught:
        AdminGuard(TOKEN).check(request)
    assert caught.value.status == 401
    assert "Authorization: Bearer <BIS_ADMIN_TOKEN>" in caught.value.message
    assert request.responseHeaders.getRawHeaders(b'www-authenticate') == [
        b'Bearer realm="bis admin"']
    [logged] = refusals(log_events)
    assert host in logged and 'no Authorization header' in logged


@pytest.mark.parametrize('header', [TOKEN.encode(), b'Basic ' + TOKEN.encode(), b'Bearer',
                                    b'Bearer   '])
def test_with_token_a_malformed_authorization_is_unauthorized(header):
    with pytest.raises(Unauthorized) as caught:
        AdminGuard(TOKEN).check(admin_request('10.1.2.3', header))
    assert "send 'Authorization: Bearer <BIS_ADMIN_TOKEN>'" in caught.value.message


def test_a_token_sent_without_bearer_is_told_so_without_echoing_it(log_events):
    with pytest.raises(Unauthorized) as caught:
        AdminGuard(TOKEN).check(admin_request('10.1.2.3', TOKEN.encode()))
    assert caught.value.message == (
        "admin route /shutdown: the Authorization header has the token without 'Bearer ' before it; "
        "send 'Authorization: Bearer <BIS_ADMIN_TOKEN>'")
    assert TOKEN not in ' '.join(refusals(log_events))


@pytest.mark.parametrize('host', ['127.0.0.1', '10.1.2.3'])
def test_with_token_a_wrong_token_is_forbidden(host):
    with pytest.raises(Forbidden) as caught:
        AdminGuard(TOKEN).check(admin_request(host, b'Bearer ' + TOKEN[:-1].encode()))
    assert caught.value.status == 403
    assert 'wrong' in caught.value.message


def test_with_token_the_right_token_is_served_from_anywhere():
    guard = AdminGuard(TOKEN)
    guard.check(admin_request('10.1.2.3', b'Bearer ' + TOKEN.encode()))
    guard.check(admin_request('127.0.0.1', b'bearer  ' + TOKEN.encode() + b' '))
    guard.check(admin_request('127.0.0.1', b'Bearer\t' + TOKEN.encode()))


def test_non_ascii_token_bytes_are_refused_not_crashed():
    with pytest.raises(Forbidden):
        AdminGuard(TOKEN).check(admin_request('10.1.2.3', 'Bearer tök€n'.encode('utf-8')))


def test_token_from_environment():
    assert AdminGuard.from_environ({'BIS_ADMIN_TOKEN': TOKEN}).token_required
    assert not AdminGuard.from_environ({}).token_required


def test_no_token_value_in_logs_or_messages(log_events):
    guard = AdminGuard(TOKEN)
    presented = TOKEN + 'x'  # a near miss is as secret as the token itself
    messages = []
    for request in (admin_request('10.1.2.3'),
                    admin_request('10.1.2.3', b'Bearer ' + presented.encode()),
                    admin_request('10.1.2.3', b'Token ' + presented.encode())):
        with pytest.raises(BisError) as caught:
            guard.check(request)
        messages.append(caught.value.message)
    assert len(refusals(log_events)) == 3
    everything = repr(log_events) + ''.join(formatEvent(e) for e in log_events) + repr(messages)
    assert TOKEN not in everything
    assert presented not in everything


class AdminApp:
    """A minimal app wired the way the gateway is: the guard raises, one handler answers."""

    app = Klein()

    def __init__(self, guard):
        self.guard = guard
        self.shutdowns = 0

    @app.handle_errors(BisError)
    def error(self, request, failure):
        return error_answer(request, failure)

    @app.route('/shutdown', methods=['POST'])
    def shutdown(self, request):
        self.guard.check(request)
        self.shutdowns += 1
        return write_json(request, 200, {'MESSAGE': 'OK'})



def post_shutdown(service, headers=None):
    # StubTreq's client is 127.0.0.1: the token rule applies to loopback callers too
    client = StubTreq(service.app.resource())
    response = result_of(client.post('http://127.0.0.1:5002/shutdown',
                                     json={'SIGNATURE': 'SAFE_KILL_SERVER_CMD'},
                                     headers=headers or {}))
    body = json.loads(result_of(response.content()))
    return response, body


def test_a_refused_admin_call_answers_401_json_and_changes_nothing():
    service = AdminApp(AdminGuard(TOKEN))
    response, body = post_shutdown(service)
    assert response.code == 401
    assert 'Authorization: Bearer' in body['ERROR']
    assert response.headers.getRawHeaders(b'www-authenticate') == [b'Bearer realm="bis admin"']
    assert service.shutdowns == 0


def test_an_authorized_admin_call_is_served():
    service = AdminApp(AdminGuard(TOKEN))
    response, body = post_shutdown(service, {b'Authorization': [b'Bearer ' + TOKEN.encode()]})
    assert (response.code, body) == (200, {'MESSAGE': 'OK'})
    assert service.shutdowns == 1


# -- browsers: another origin, DNS rebinding, bodies a page may send without asking -------------
def browser_request(headers, host='127.0.0.1', method=b'POST', token=None):
    request = admin_request(host)
    request.method = method
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    if token is not None:
        request.requestHeaders.setRawHeaders(b'authorization', [b'Bearer ' + token.encode()])
    return request


JSON_BODY = {b'content-type': b'application/json'}


@pytest.mark.parametrize('token', [None, TOKEN])
@pytest.mark.parametrize('headers', [
    {b'origin': b'http://evil.example', b'host': b'127.0.0.1:5002'},
    {b'origin': b'null', b'host': b'127.0.0.1:5002'},
    {b'origin': b'http://127.0.0.1:8080', b'host': b'127.0.0.1:5002'},  # another port is another origin
    {b'sec-fetch-site': b'cross-site', b'host': b'127.0.0.1:5002'},
    {b'sec-fetch-site': b'same-site', b'host': b'localhost:5002'},
])
def test_a_request_from_another_origin_is_forbidden_with_or_without_token(headers, token, log_events):
    with pytest.raises(Forbidden) as caught:
        AdminGuard(token).check(browser_request({**headers, **JSON_BODY}, token=token))
    assert caught.value.status == 403
    assert "gateway's own origin" in caught.value.message
    assert refusals(log_events)


@pytest.mark.parametrize('headers', [
    {b'origin': b'http://127.0.0.1:5002', b'host': b'127.0.0.1:5002', b'sec-fetch-site': b'same-origin'},
    {b'origin': b'http://localhost:5002', b'host': b'localhost:5002'},
    {b'origin': b'https://LOCALHOST:5002', b'host': b'localhost:5002'},  # TLS ended by a proxy
    {b'sec-fetch-site': b'none', b'host': b'[::1]:5002'},  # typed into the address bar
    {b'host': b'127.0.0.1'},  # curl
    {},  # HTTP/1.0, no Host
])
def test_the_gateways_own_page_and_non_browser_clients_are_served(headers):
    AdminGuard().check(browser_request({**headers, **JSON_BODY}))


@pytest.mark.parametrize('host_header', [b'evil.example', b'evil.example:5002', b'10.0.0.5:5002',
                                         b'localhost.evil.example', b'127.0.0.1.nip.io:5002'])
def test_without_token_a_host_that_is_not_a_loopback_name_is_forbidden(host_header):
    # DNS rebinding: the page's own name now resolves to 127.0.0.1; Origin and Host agree
    request = browser_request({b"origin": b"http://" + host_header, b"host": host_header, **JSON_BODY})
    with pytest.raises(Forbidden) as caught:
        AdminGuard().check(request)
    assert 'is not localhost or a loopback address' in caught.value.message


@pytest.mark.parametrize('host_header', [b'localhost', b'LocalHost:5002', b'app.localhost:5002',
                                         b'127.0.0.1:5002', b'127.1.2.3', b'[::1]:5002'])
def test_without_token_a_loopback_host_is_served(host_header):
    AdminGuard().check(browser_request({b"host": host_header, **JSON_BODY}))


def test_with_token_any_host_is_served():
    AdminGuard(TOKEN).check(browser_request({b"host": b"gateway.internal:5002", **JSON_BODY},
                                            host='10.1.2.3', token=TOKEN))


@pytest.mark.parametrize('content_type', [None, b'text/plain', b'application/x-www-form-urlencoded',
                                          b'multipart/form-data; boundary=x', b'application/jsonx'])
def test_an_admin_body_that_is_not_declared_json_is_refused_with_415(content_type):
    headers = {b'content-type': content_type} if content_type else {}
    with pytest.raises(UnsupportedMediaType) as caught:
        AdminGuard().check(browser_request(headers))
    assert caught.value.status == 415
    assert 'Content-Type: application/json' in caught.value.message


def test_json_with_a_charset_is_json():
    AdminGuard().check(browser_request({b'content-type': b'application/json; charset=utf-8'}))


def test_a_guarded_get_needs_no_content_type():
    AdminGuard().check(browser_request({}, method=b'GET'))


# -- the token itself --------------------------------------------------------------------------
def test_a_token_from_a_secret_file_has_its_newline_stripped():
    guard = AdminGuard(TOKEN + '\n')
    guard.check(browser_request(JSON_BODY, token=TOKEN))
    assert admin_token('  ' + TOKEN + '\r\n') == TOKEN
    assert admin_token(' \n') is None


@pytest.mark.parametrize('value', ['s3cret', 'x' * 15, ' fifteen-chars-x \n'])
def test_a_token_shorter_than_16_characters_is_a_config_error(value):
    with pytest.raises(ConfigError) as caught:
        AdminGuard(value)
    assert 'BIS_ADMIN_TOKEN is' in str(caught.value) and 'use at least 16' in str(caught.value)


def test_a_model_server_without_token_refuses_its_control_route(log_events):
    with pytest.raises(Forbidden) as caught:
        AdminGuard(require_token=True).check(browser_request(JSON_BODY))
    assert 'started without BIS_ADMIN_TOKEN' in caught.value.message
