"""A local OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` with the protobuf body the
OpenTelemetry exporter sends, decoded with ``opentelemetry-proto`` into ``Span`` records."""

import gzip
import http.server
import threading

import attr
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)


def _value(any_value):
    kind = any_value.WhichOneof('value')
    return getattr(any_value, kind) if kind else None


@attr.s(frozen=True)
class Span:
    service = attr.ib()
    name = attr.ib()
    trace_id = attr.ib()  # hex, as in a traceparent
    span_id = attr.ib()
    parent_id = attr.ib()  # hex, '' for a root span
    attributes = attr.ib()
    links = attr.ib()  # [(trace_id, span_id)]
    status = attr.ib()  # 0 unset, 1 ok, 2 error
    events = attr.ib()  # names (an exception is recorded as an 'exception' event)
    start = attr.ib()
    end = attr.ib()


class OTLPReceiver:
    """Listens on 127.0.0.1 (a free port); ``spans`` is every span received so far."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                if self.headers.get('Content-Encoding') == 'gzip':
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header('Content-Type', 'application/x-protobuf')
                self.send_header('Content-Length', str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)

    @property
    def endpoint(self):
        return 'http://127.0.0.1:{}'.format(self.server.server_address[1])

    def add(self, request):
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(Span(
                        service=resource.get('service.name'), name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status=span.status.code, events=[event.name for event in span.events],
                        start=span.start_time_unix_nano, end=span.end_time_unix_nano))
        with self.lock:
            self.spans.extend(found)

    def of_trace(self, trace_id):
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()
