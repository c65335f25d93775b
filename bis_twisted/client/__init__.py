"""``Client`` and ``AsyncClient``: the gateway's routes as Python calls, on ``httpx``.

Install alone with ``pip install ./bis_twisted/client`` from a clone (httpx is its only
dependency; the full server includes it too). Every error answer of the gateway is raised
as a typed exception carrying the HTTP status and the gateway's ``ERROR`` text::

    from bis_twisted.client import Client, BadInput, Overloaded

    with Client('http://127.0.0.1:5002', retries=3) as bis:
        answer = bis.run('iris_classifier', FEATURES=[5.1, 3.5, 1.4, 0.2])
        print(answer['predict_result']['predictions'][0]['label'])

``AsyncClient`` has the same calls as coroutines. This module imports nothing of the server
side: a client machine needs ``httpx`` only.
"""

import asyncio
import json
import time
from typing import Any, AsyncIterator, Dict, Iterator, Mapping, Optional, Type

try:
    import httpx
except ImportError as exc:  # the [client] extra
    raise ImportError("bis_twisted.client needs httpx: pip install 'bis_twisted[client]'") from exc

__all__ = [
    'Client', 'AsyncClient', 'BisClientError', 'BadInput', 'Unauthorized', 'Forbidden', 'UnknownSignature',
    'NotFound', 'PayloadTooLarge', 'RateLimited', 'EndpointError', 'BadGateway', 'Overloaded', 'GatewayTimeout',
    'GatewayUnreachable', 'StreamingAnswer', 'Conflict',
]

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRY_WAIT = 30.0
SHUTDOWN_SIGNATURE = 'SAFE_KILL_SERVER_CMD'

Answer = Dict[str, Any]


class BisClientError(Exception):
    """An error answer of the gateway: ``status`` (HTTP), ``error`` (its ``ERROR`` text) and
    ``body`` (the whole JSON answer, e.g. ``<WorkerClass>_ERROR`` of a failing hook)."""

    def __init__(self, status: Optional[int], error: str, body: Optional[Answer] = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__('{}: {}'.format(status, error) if status is not None else error)
        self.status = status
        self.error = error
        self.body: Answer = body or {}
        self.retry_after = retry_after


class BadInput(BisClientError):
    """400: the body, SIGNATURE, or an input the endpoint refused (its INPUT_SCHEMA or its
    ``_pre_process``)."""


class Unauthorized(BisClientError):
    """401: an admin route without a token while the gateway has one, or ``/run`` without a
    (known) API key on a gateway with ``API_KEYS``."""


class Forbidden(BisClientError):
    """403: a wrong token, a remote client of a gateway with no token, or an API key that may
    not call that endpoint."""


class RateLimited(BisClientError):
    """429: the API key is over its rate; ``retry_after`` says when it has a request again."""


class NotFound(BisClientError):
    """404 on a route that is not about an endpoint (``/metrics`` turned off, a bad path)."""


class UnknownSignature(NotFound):
    """404: no endpoint of that name; ``error`` lists the available ones."""


class Conflict(BisClientError):
    """409: a rollout of that endpoint is under way already (or none is, to promote or abort),
    or a request pinned to a candidate (``X-Bis-Version``) that no longer serves."""


class PayloadTooLarge(BisClientError):
    """413: the body is over the gateway's ``MAX_BODY_MB``."""


class EndpointError(BisClientError):
    """500: the endpoint's ``_predict`` or ``_post_process`` raised (details in ``body``)."""


class BadGateway(BisClientError):
    """502: the model server closed the connection or answered garbage."""


class Overloaded(BisClientError):
    """503: the model server is loading, restarting, stopped, failing, or its queue is full;
    ``retry_after`` is the gateway's ``Retry-After`` in seconds, None when waiting will not
    help (stopped: ``/start_server`` it; failed: it needs a fix)."""


class GatewayTimeout(BisClientError):
    """504: the model server did not answer within its ``TIMEOUT``."""


class GatewayUnreachable(BisClientError):
    """No HTTP answer at all: connection refused, reset, or the client's own timeout."""


class StreamingAnswer(BisClientError):
    """``run`` was called on an endpoint that streams its answer (NDJSON or SSE): read it with
    ``stream``, which yields each chunk as it comes. The connection was closed unread, which
    stops the endpoint's generator."""


_BY_STATUS: Dict[int, Type[BisClientError]] = {
    400: BadInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 429: RateLimited,
    500: EndpointError, 502: BadGateway, 503: Overloaded, 504: GatewayTimeout,
}


def _retry_after(response: 'httpx.Response') -> Optional[float]:
    value = response.headers.get('retry-after')
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not what the gateway sends; retry after a second
        return 1.0


def _decode(response: 'httpx.Response', path: str) -> Answer:
    """The answer's JSON object, or the typed error for its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {'ERROR': 'not a JSON object: {!r}'.format(response.text[:200])} if response.is_error else {
            'TEXT': response.text}
    if response.status_code < 400:
        return body
    error = str(body.get('ERROR', 'HTTP {}'.format(response.status_code)))
    cls = _BY_STATUS.get(response.status_code, BisClientError)
    if cls is NotFound and path in ('/run', '/notifications', '/start_server', '/kill_server', '/update_workers',
                                    '/reload_server', '/rollout'):
        cls = UnknownSignature
    raise cls(response.status_code, error, body, _retry_after(response))


def _ready_answer(response: 'httpx.Response') -> Answer:
    """``/ready``'s 503 is an answer (``NOT_READY`` says who), not an error."""
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and 'READY' in body:
            return body
    return _decode(response, '/ready')


def _stream_line(line: str) -> Optional[Answer]:
    """A line of a streaming answer: the chunk's ``predict_result`` as ``{'chunk': value}``;
    None for the last line (the summary); the typed error when the stream ended with one."""
    if not line:
        return {}
    try:
        body = json.loads(line)
    except ValueError:
        raise BadGateway(200, 'a line of the stream is not JSON: {!r}'.format(line[:200])) from None
    if not isinstance(body, dict):
        raise BadGateway(200, 'a line of the stream is not a JSON object: {!r}'.format(line[:200]))
    if 'ERROR' in body:  # its "status" says what a plain answer's HTTP status would have
        given = body.get('status')
        status = given if isinstance(given, int) else 500
        raise _BY_STATUS.get(status, BisClientError)(status, str(body['ERROR']), body)
    if 'predict_result' in body and 'chunks' not in body:
        return {'chunk': body['predict_result']}
    return None


def _is_stream(response: 'httpx.Response') -> bool:
    kind: str = response.headers.get('content-type', '')
    return kind.startswith(('application/x-ndjson', 'text/event-stream'))


def _refuse_stream(response: 'httpx.Response', path: str, body: Optional[Answer]) -> StreamingAnswer:
    signature = body.get('SIGNATURE') if body else None
    name = repr(signature) if isinstance(signature, str) else 'this endpoint'
    kind = response.headers.get('content-type', '').split(';')[0]
    return StreamingAnswer(response.status_code, '{} streams its answer ({}); read it with Client.stream({}, ...) '
                                                 '(AsyncClient.stream), which yields each chunk as it comes'.format(
                                                     name, kind, name if signature else 'signature'))


class _Calls:
    """What both clients share: the URL, the headers, the retry rule and the payloads."""

    def __init__(self, base_url: str, token: Optional[str], timeout: Optional[float], retries: int,
                 max_retry_wait: float, api_key: Optional[str] = None) -> None:
        if retries < 0:
            raise ValueError('retries must be >= 0, got {!r}'.format(retries))
        self.base_url = base_url.rstrip('/')
        self.token = token
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def headers(self, request_id: Optional[str]) -> Dict[str, str]:
        headers = {'Accept': 'application/json'}
        if self.token:
            headers['Authorization'] = 'Bearer ' + self.token
        if self.api_key:  # its own header: Authorization may carry the admin token
            headers['X-API-Key'] = self.api_key
        if request_id:
            headers['X-Request-Id'] = request_id
        return headers

    def wait_before_retry(self, error: BisClientError, attempt: int) -> Optional[float]:
        """Seconds to wait before retrying after ``error``, or None to raise it. Only a 503
        with ``Retry-After`` is retried: the model server never started on that request, and
        the gateway expects it back. A 503 without one (stopped by an operator, failing
        before it is ready) will not mend by waiting."""
        if not isinstance(error, Overloaded) or error.retry_after is None or attempt >= self.retries:
            return None
        return min(error.retry_after, self.max_retry_wait)

    @staticmethod
    def run_payload(signature: str, inputs: Optional[Mapping[str, Any]], fields: Mapping[str, Any]) -> Answer:
        payload: Answer = dict(inputs or {})
        payload.update(fields)
        payload['SIGNATURE'] = signature
        return payload

    @staticmethod
    def rollout_payload(signature: str, server_class: Optional[str], percent: Optional[float], shadow: bool,
                        config: Optional[Mapping[str, Any]], rollback_on: Any, tolerance: Optional[float],
                        promote: bool, abort: bool) -> Answer:
        payload: Answer = {'SIGNATURE': signature}
        if promote or abort:
            payload['PROMOTE' if promote else 'ABORT'] = True
            return payload
        for key, value in (('SERVER_CLASS', server_class), ('PERCENT', percent), ('CONFIG', config),
                           ('ROLLBACK_ON', rollback_on), ('TOLERANCE', tolerance)):
            if value is not None:
                payload[key] = dict(value) if isinstance(value, Mapping) else value
        if shadow:
            payload['SHADOW'] = True
        return payload


def _unreachable(exc: Exception, url: str) -> GatewayUnreachable:
    return GatewayUnreachable(None, 'no answer from {}: {}: {}'.format(url, type(exc).__name__, exc))


class Client(_Calls):
    """A blocking client of one gateway.

    ``token`` is sent as ``Authorization: Bearer`` (the admin routes need it when the gateway
    has ``BIS_ADMIN_TOKEN``); ``api_key`` as ``X-API-Key`` (``/run`` needs it when the gateway
    has ``API_KEYS``); ``timeout`` is per request, in seconds (None: wait for ever);
    ``retries`` is how many times a 503 is retried, waiting its ``Retry-After`` each time (at
    most ``max_retry_wait`` seconds). ``transport`` is handed to ``httpx.Client`` (tests,
    proxies, unix sockets).
    """

    def __init__(self, base_url: str = 'http://127.0.0.1:5002', token: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, retries: int = 0,
                 max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
                 transport: Optional['httpx.BaseTransport'] = None, api_key: Optional[str] = None) -> None:
        super().__init__(base_url, token, timeout, retries, max_retry_wait, api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, trust_env=False)

    def __enter__(self) -> 'Client':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Optional[Answer] = None,
              request_id: Optional[str] = None, timeout: Any = httpx.USE_CLIENT_DEFAULT) -> 'httpx.Response':
        """The whole answer; a streaming one is refused unread (``StreamingAnswer``)."""
        try:
            request = self._http.build_request(method, path, json=body, headers=self.headers(request_id),
                                               timeout=timeout)
            response = self._http.send(request, stream=True)
            try:
                if _is_stream(response):
                    raise _refuse_stream(response, path, body)
                response.read()
            finally:
                response.close()
            return response
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.base_url + path) from exc

    def _json(self, method: str, path: str, body: Optional[Answer] = None,
              request_id: Optional[str] = None, timeout: Any = httpx.USE_CLIENT_DEFAULT) -> Answer:
        attempt = 0
        while True:
            try:
                return _decode(self._call(method, path, body, request_id, timeout), path)
            except BisClientError as error:
                wait = self.wait_before_retry(error, attempt)
                if wait is None:
                    raise
            attempt += 1
            time.sleep(wait)  # the gateway's Retry-After: the point of the retry

    def run(self, signature: str, inputs: Optional[Mapping[str, Any]] = None, /,
            request_id: Optional[str] = None, **fields: Any) -> Answer:
        """``POST /run``: the answer (``predict_result``, ``call_id``, ``signature`` and the
        gateway's fields). Inputs as keywords (``FEATURES=[...]``) or as a dict. A streaming
        endpoint raises ``StreamingAnswer``: read it with ``stream``."""
        return self._json('POST', '/run', self.run_payload(signature, inputs, fields), request_id)

    def stream(self, signature: str, inputs: Optional[Mapping[str, Any]] = None, /,
               request_id: Optional[str] = None, **fields: Any) -> Iterator[Any]:
        """``POST /run`` read as it comes: yields each chunk's ``predict_result`` of a
        streaming endpoint (a ``_predict`` that yields) as soon as it arrives; a stream that
        ends with an error raises its typed error (``EndpointError``, ``GatewayTimeout``,
        ``BadGateway``). A non-streaming endpoint's answer is
        yielded once. Leaving the loop early closes the connection, which stops the
        endpoint's generator."""
        payload = self.run_payload(signature, inputs, fields)
        headers = dict(self.headers(request_id), Accept='application/x-ndjson')
        try:
            with self._http.stream('POST', '/run', json=payload, headers=headers) as response:
                if not _is_stream(response):
                    response.read()
                    yield _decode(response, '/run').get('predict_result')
                    return
                for line in response.iter_lines():
                    item = _stream_line(line)
                    if item is None:
                        return
                    if item:
                        yield item['chunk']
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.base_url + '/run') from exc

    def list_servers(self) -> Answer:
        return self._json('GET', '/list_servers')

    def system_status(self) -> Answer:
        return self._json('GET', '/system_status')

    def notifications(self, signature: str) -> Answer:
        return self._json('POST', '/notifications', {'SIGNATURE': signature})

    def health(self) -> Answer:
        return self._json('GET', '/health')

    def ready(self) -> Answer:
        """``/ready`` as an answer, also when it is 503: ``READY`` and ``NOT_READY`` say who."""
        return _ready_answer(self._call('GET', '/ready'))

    def stats(self) -> Answer:
        return self._json('GET', '/stats')

    def metrics(self) -> str:
        response = self._call('GET', '/metrics')
        if response.is_error:
            _decode(response, '/metrics')
        return response.text

    def openapi(self) -> Answer:
        return self._json('GET', '/openapi.json')

    # -- admin routes (a token when the gateway has one) ------------------------------------
    def start_server(self, signature: str) -> Answer:
        return self._json('POST', '/start_server', {'SIGNATURE': signature})

    def kill_server(self, signature: str) -> Answer:
        """Stop one server, or every one with ``"*"``."""
        return self._json('POST', '/kill_server', {'SIGNATURE': signature})

    def update_workers(self, signature: str, nr_workers: int) -> Answer:
        return self._json('POST', '/update_workers', {'SIGNATURE': signature, 'NR_WORKERS': nr_workers})

    def reload_server(self, signature: str) -> Answer:
        """New processes with the endpoint file read again replace the old ones (nothing dropped)."""
        return self._json('POST', '/reload_server', {'SIGNATURE': signature})

    def reload_config(self) -> Answer:
        """The gateway reads its config file again and applies what changed."""
        return self._json('POST', '/reload_config', {})

    def rollout(self, signature: str, server_class: Optional[str] = None, percent: Optional[float] = None, *,
                shadow: bool = False, config: Optional[Mapping[str, Any]] = None, rollback_on: Any = None,
                tolerance: Optional[float] = None, promote: bool = False, abort: bool = False,
                timeout: Optional[float] = None) -> Answer:
        """``POST /rollout``: start a canary (``percent`` of the requests go to the candidate
        ``server_class``) or a shadow (``shadow=True``: it gets copies), or ``promote`` /
        ``abort`` the one under way. Starting waits for the candidate to load: ``timeout``
        (seconds, None: wait for ever) is this call's own. The answer's ``ROLLOUT`` is the
        rollout's state and figures; ``Conflict`` (409) when one runs already."""
        return self._json('POST', '/rollout', self.rollout_payload(
            signature, server_class, percent, shadow, config, rollback_on, tolerance, promote, abort), timeout=timeout)

    def shutdown(self) -> Answer:
        return self._json('POST', '/shutdown', {'SIGNATURE': SHUTDOWN_SIGNATURE})


class AsyncClient(_Calls):
    """``Client``'s calls as coroutines, on ``httpx.AsyncClient`` (asyncio, or Twisted's
    asyncio reactor)."""

    def __init__(self, base_url: str = 'http://127.0.0.1:5002', token: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, retries: int = 0,
                 max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
                 transport: Optional['httpx.AsyncBaseTransport'] = None, api_key: Optional[str] = None) -> None:
        super().__init__(base_url, token, timeout, retries, max_retry_wait, api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport,
                                       trust_env=False)

    async def __aenter__(self) -> 'AsyncClient':
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Optional[Answer] = None,
                    request_id: Optional[str] = None, timeout: Any = httpx.USE_CLIENT_DEFAULT) -> 'httpx.Response':
        """The whole answer; a streaming one is refused unread (``StreamingAnswer``)."""
        try:
            request = self._http.build_request(method, path, json=body, headers=self.headers(request_id),
                                               timeout=timeout)
            response = await self._http.send(request, stream=True)
            try:
                if _is_stream(response):
                    raise _refuse_stream(response, path, body)
                await response.aread()
            finally:
                await response.aclose()
            return response
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.base_url + path) from exc

    async def _json(self, method: str, path: str, body: Optional[Answer] = None,
                    request_id: Optional[str] = None, timeout: Any = httpx.USE_CLIENT_DEFAULT) -> Answer:
        attempt = 0
        while True:
            try:
                return _decode(await self._call(method, path, body, request_id, timeout), path)
            except BisClientError as error:
                wait = self.wait_before_retry(error, attempt)
                if wait is None:
                    raise
            attempt += 1
            await asyncio.sleep(wait)

    async def run(self, signature: str, inputs: Optional[Mapping[str, Any]] = None, /,
                  request_id: Optional[str] = None, **fields: Any) -> Answer:
        return await self._json('POST', '/run', self.run_payload(signature, inputs, fields), request_id)

    async def stream(self, signature: str, inputs: Optional[Mapping[str, Any]] = None, /,
                     request_id: Optional[str] = None, **fields: Any) -> AsyncIterator[Any]:
        """``Client.stream`` as an async iterator (``async for word in bis.stream(...)``)."""
        payload = self.run_payload(signature, inputs, fields)
        headers = dict(self.headers(request_id), Accept='application/x-ndjson')
        try:
            async with self._http.stream('POST', '/run', json=payload, headers=headers) as response:
                if not _is_stream(response):
                    await response.aread()
                    yield _decode(response, '/run').get('predict_result')
                    return
                async for line in response.aiter_lines():
                    item = _stream_line(line)
                    if item is None:
                        return
                    if item:
                        yield item['chunk']
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.base_url + '/run') from exc

    async def list_servers(self) -> Answer:
        return await self._json('GET', '/list_servers')

    async def system_status(self) -> Answer:
        return await self._json('GET', '/system_status')

    async def notifications(self, signature: str) -> Answer:
        return await self._json('POST', '/notifications', {'SIGNATURE': signature})

    async def health(self) -> Answer:
        return await self._json('GET', '/health')

    async def ready(self) -> Answer:
        return _ready_answer(await self._call('GET', '/ready'))

    async def stats(self) -> Answer:
        return await self._json('GET', '/stats')

    async def metrics(self) -> str:
        response = await self._call('GET', '/metrics')
        if response.is_error:
            _decode(response, '/metrics')
        return response.text

    async def openapi(self) -> Answer:
        return await self._json('GET', '/openapi.json')

    async def start_server(self, signature: str) -> Answer:
        return await self._json('POST', '/start_server', {'SIGNATURE': signature})

    async def kill_server(self, signature: str) -> Answer:
        return await self._json('POST', '/kill_server', {'SIGNATURE': signature})

    async def update_workers(self, signature: str, nr_workers: int) -> Answer:
        return await self._json('POST', '/update_workers', {'SIGNATURE': signature, 'NR_WORKERS': nr_workers})

    async def reload_server(self, signature: str) -> Answer:
        return await self._json('POST', '/reload_server', {'SIGNATURE': signature})

    async def reload_config(self) -> Answer:
        return await self._json('POST', '/reload_config', {})

    async def rollout(self, signature: str, server_class: Optional[str] = None, percent: Optional[float] = None, *,
                      shadow: bool = False, config: Optional[Mapping[str, Any]] = None, rollback_on: Any = None,
                      tolerance: Optional[float] = None, promote: bool = False, abort: bool = False,
                      timeout: Optional[float] = None) -> Answer:
        """``Client.rollout``'s call as a coroutine."""
        return await self._json('POST', '/rollout', self.rollout_payload(
            signature, server_class, percent, shadow, config, rollback_on, tolerance, promote, abort), timeout=timeout)

    async def shutdown(self) -> Answer:
        return await self._json('POST', '/shutdown', {'SIGNATURE': SHUTDOWN_SIGNATURE})
