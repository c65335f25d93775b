"""OpenTelemetry traces of a request, through the gateway and into its model server.

Off unless the ``otel`` extra is installed (``pip install 'bis_twisted[otel]'``) and the
standard variables ask for it: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, or ``OTEL_TRACES_EXPORTER`` set to ``otlp`` or
``console``; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` keep it off. The
SDK reads the rest itself: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` (and ``_ARG``), ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``. Off, every
function here returns at its first line and nothing of OpenTelemetry is imported.

What is traced (W3C ``traceparent`` carries the context between processes):

- gateway: a server span per ``/run`` (``start_run``/``end_run``), continuing the client's
  ``traceparent``, with the endpoint, status, replica, retries and API key name (never the
  key); a client span per hop to a model server (``hop_span``), whose context goes in the
  request's headers (``with_context`` / ``traceparent``); the answer's ``traceparent`` header;
- model server: a server span per request (``start_request``, ended when the answer is
  written), continuing the gateway's; under it ``queue wait`` and a span per hook
  (``hook_span``: ``_pre_process``, ``_predict``, ``_post_process``; an exception a hook raises
  is recorded on its span); a batch's ``_batch``/``_predict``/``_unbatch`` span is linked to
  each request span of the batch; a streamed answer's ``stream`` span lasts until the stream
  ended (``start_stream``/``end_stream``).

Hooks find their request's span by request id (``X-Request-Id``): they run in a worker
thread, which the reactor thread's context does not reach.
"""

import contextlib
import contextvars
import os
import time
from typing import Any, Dict, List, Optional

TRACEPARENT = b'traceparent'
BATCH_STAGES = ('_batch', '_predict', '_unbatch')

_tracer = None     # the SDK's tracer while tracing is on, else None: every hook returns at once
_provider = None
_requests: Dict[str, List['_Request']] = {}  # model server: request id -> its request spans
_run_state = contextvars.ContextVar('bis_run_state', default=None)  # gateway: the /run being traced
_NULL = contextlib.nullcontext()


# -- switching on ------------------------------------------------------------------------------
def wanted(environ=None) -> bool:
    """Whether the variables ask for traces (the extra may still be missing)."""
    environ = os.environ if environ is None else environ
    if environ.get('OTEL_SDK_DISABLED', '').strip().lower() == 'true':
        return False
    exporter = environ.get('OTEL_TRACES_EXPORTER', '').strip().lower()
    if exporter:
        return exporter != 'none'
    return bool(environ.get('OTEL_EXPORTER_OTLP_ENDPOINT') or environ.get('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'))


def setup(default_service_name: str, reactor=None, environ=None, **resource_attributes: Any) -> bool:
    """Turn tracing on for this process when the variables ask for it and the extra is
    installed; flush the spans when ``reactor`` shuts down. Returns whether it is on."""
    global _tracer, _provider
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        from twisted.logger import Logger
        Logger().warn('OTEL_* variables are set but OpenTelemetry is not installed: no traces '
                      "(pip install 'bis_twisted[otel]')")
        return False
    attributes = {'service.name': environ.get('OTEL_SERVICE_NAME') or default_service_name}
    attributes.update({'bis.' + key: value for key, value in resource_attributes.items()})
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler: OTEL_TRACES_SAMPLER
    names = [n.strip() for n in environ.get('OTEL_TRACES_EXPORTER', 'otlp').lower().split(',') if n.strip()]
    for name in names:
        if name == 'console':
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == 'otlp':
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer('bis_twisted')
    if reactor is not None:
        reactor.addSystemEventTrigger('before', 'shutdown', shutdown)
    return True


def shutdown() -> None:
    """Export what is left and turn tracing off."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    _requests.clear()
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


# -- context in headers --------------------------------------------------------------------------
def _format(span_context) -> bytes:
    return '00-{:032x}-{:016x}-{:02x}'.format(span_context.trace_id, span_context.span_id,
                                             int(span_context.trace_flags)).encode('ascii')


def _parent_of(request):
    """The context of the request's ``traceparent`` (an empty one when it has none)."""
    carrier = {}
    for name in (b'traceparent', b'tracestate'):
        value = request.getHeader(name)
        if value:
            carrier[name.decode('ascii')] = value.decode('latin-1')
    return _extracted(carrier)


def _extracted(carrier):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    return TraceContextTextMapPropagator().extract(carrier)


def traceparent() -> Optional[bytes]:
    """The ``traceparent`` value of the current span (None when tracing is off or no span is
    current): what a request to the next process carries."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    span_context = trace.get_current_span().get_span_context()
    return _format(span_context) if span_context.is_valid else None


def with_context(headers):
    """``headers`` (twisted ``Headers``) for a request to a model server: a copy with the
    current span's ``traceparent`` when there is one, else the same object."""
    if _tracer is None:
        return headers
    value = traceparent()
    if value is None:
        return headers
    headers = headers.copy()
    headers.setRawHeaders(TRACEPARENT, [value])
    return headers


def current_ids() -> Dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for a log line (empty when none)."""
    if _tracer is None:
        return {}
    from opentelemetry import trace
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {'trace_id': '{:032x}'.format(span_context.trace_id), 'span_id': '{:016x}'.format(span_context.span_id)}


# -- the gateway ---------------------------------------------------------------------------------------
class _Run:
    __slots__ = ('span', 'token', 'state_token', 'hops')

    def __init__(self, span, token):
        self.span = span
        self.token = token
        self.state_token = None
        self.hops = 0


def start_run(request) -> Optional[_Run]:
    """The gateway's server span of one ``/run``, current until ``end_run``; its
    ``traceparent`` goes in the answer's headers."""
    if _tracer is None:
        return None
    from opentelemetry import context, trace
    span = _tracer.start_span('POST /run', context=_parent_of(request), kind=trace.SpanKind.SERVER,
                              attributes={'http.request.method': request.method.decode('ascii', 'replace'),
                                          'url.path': request.path.decode('ascii', 'replace')})
    run = _Run(span, context.attach(trace.set_span_in_context(span)))
    run.state_token = _run_state.set(run)
    request.setHeader(TRACEPARENT, _format(span.get_span_context()))
    return run


def end_run(run: Optional[_Run], status: int, endpoint: Optional[str] = None, key_name: Optional[str] = None) -> None:
    if run is None:
        return
    from opentelemetry import context, trace
    span = run.span
    span.set_attribute('http.response.status_code', status)
    if endpoint is not None:
        span.set_attribute('bis.endpoint', endpoint)
    if key_name is not None:
        span.set_attribute('bis.api_key', key_name)
    span.set_attribute('bis.retries', max(run.hops - 1, 0))
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    _run_state.reset(run.state_token)
    context.detach(run.token)


def hop_span(endpoint: str, target):
    """A context manager: the client span of one request to a model server (current while
    it runs, so ``with_context`` puts it in the request's headers)."""
    if _tracer is None:
        return _NULL
    return _hop(endpoint, target)


@contextlib.contextmanager
def _hop(endpoint, target):
    from opentelemetry import trace
    run = _run_state.get()
    retry = 0
    if run is not None:
        retry = run.hops
        run.hops += 1
        run.span.set_attribute('bis.replica', target.base_url)
    with _tracer.start_as_current_span('hop ' + endpoint, kind=trace.SpanKind.CLIENT, attributes={
            'bis.endpoint': endpoint, 'bis.replica': target.base_url, 'bis.retry': retry}) as span:
        yield span


# -- the model server ----------------------------------------------------------------------------------
class _Request:
    __slots__ = ('span', 'context', 'started', 'waited')

    def __init__(self, span, ctx, started):
        self.span = span
        self.context = ctx
        self.started = started  # ns: the queue wait starts here
        self.waited = False


def start_request(request, request_id: str, endpoint: str) -> None:
    """The model server's span of one request (ended when its answer is written), where the
    hooks of that request id put theirs."""
    if _tracer is None:
        return
    entry = _begin(_parent_of(request), request_id, endpoint)
    request.setHeader(TRACEPARENT, _format(entry.span.get_span_context()))
    request.notifyFinish().addBoth(lambda _r: _request_done(request.code or 200, request_id, entry))


def start_framed(parent: Optional[str], request_id: str, endpoint: str):
    """``start_request`` for a request that came in a frame, ``parent`` its ``traceparent``;
    ``end_framed`` ends it with the answer's status."""
    if _tracer is None:
        return None
    return request_id, _begin(_extracted({'traceparent': parent} if parent else {}), request_id, endpoint)


def end_framed(started, status: int) -> None:
    if started is not None:
        _request_done(status, *started)


def _begin(parent, request_id, endpoint):
    from opentelemetry import trace
    span = _tracer.start_span('POST /run', context=parent, kind=trace.SpanKind.SERVER,
                              attributes={'bis.endpoint': endpoint, 'bis.request_id': request_id})
    entry = _Request(span, trace.set_span_in_context(span), time.time_ns())
    _requests.setdefault(request_id, []).append(entry)
    return entry


def _request_done(code, request_id, entry):
    from opentelemetry import trace
    entry.span.set_attribute('http.response.status_code', code)
    if code >= 500:
        entry.span.set_status(trace.Status(trace.StatusCode.ERROR))
    entry.span.end()
    entries = _requests.get(request_id)
    if entries is not None:
        if entry in entries:
            entries.remove(entry)
        if not entries:
            del _requests[request_id]
    return None  # a client that went away is no error here


def _entry(request_id):
    entries = _requests.get(request_id) if request_id else None
    return entries[0] if entries else None


def hook_span(stage: str, request_id: Optional[str], batch_calls=None):
    """A context manager around one hook call in a worker thread: its span, a child of the
    request's span (a batch's: linked to each request's); the request's ``queue wait`` span
    ends where its first hook starts."""
    if _tracer is None:
        return _NULL
    if batch_calls and stage in BATCH_STAGES:
        entries = [e for e in (_entry(rid) for _call_id, rid in batch_calls) if e is not None]
        if not entries:
            return _NULL
        from opentelemetry import trace
        links = [trace.Link(e.span.get_span_context()) for e in entries]
        return _tracer.start_as_current_span(stage, context=entries[0].context, links=links,
                                             attributes={'bis.batch_size': len(batch_calls)})
    entry = _entry(request_id)
    if entry is None:
        return _NULL
    if not entry.waited:
        entry.waited = True
        _tracer.start_span('queue wait', context=entry.context, start_time=entry.started).end()
    return _tracer.start_as_current_span(stage, context=entry.context)


def start_stream(request_id: Optional[str]):
    """The span of a streamed answer, from its first chunk to its end (``end_stream``)."""
    if _tracer is None:
        return None
    entry = _entry(request_id)
    if entry is None:
        return None
    return _tracer.start_span('stream', context=entry.context)


def end_stream(span, chunks: int, error: Optional[str] = None) -> None:
    if span is None:
        return
    span.set_attribute('bis.chunks', chunks)
    if error:
        from opentelemetry import trace
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end()
