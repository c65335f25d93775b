"""``ModelServer``: the HTTP routes of one model server, a Klein app in front of a ``WorkerPool``.

Routes: the execution path (``/run``), ``/notifications``, ``/update_workers``,
``/get_paths``, ``/health``. It answers 503 while its workers load. The control route
(``/update_workers``) needs ``Authorization: Bearer <token>`` (see ``service``).
"""

import os
import socket

import attr
from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from .._version import __version__ as LIB_VER
from ..errors import BadRequest, ServiceUnavailable
from ..logger import Logger as CompatLogger
from ..notifications import Notifications
from ..protocol import (ANSWER_COMPLETE_HEADER, ANSWER_FIELDS_HEADER, DEFAULT_BATCH_TIMEOUT, DEFAULT_EXECUTION_PATH,
                        DEFAULT_MAX_QUEUE, NDJSON_TYPE, SERVER_PATHS, SIGNATURE, decode_answer_fields)
from ..shared import tracing
from ..shared.schemas import SchemaCheck, SchemaViolation
from ..shared.security import AdminGuard
from ..shared.web import (dumps_spaced, encode_answer, error_answer, now_text, request_id_of, request_inputs,
                          write_encoded_json, write_json)
from .pool import PooledStream, WorkerLoadError, WorkerPool
from .v2 import take_v2


def host_id():
    return os.environ.get('AID_APP_ID') or socket.gethostname()


class ModelServer:
    """The routes of one model server; ``pool`` is built from the endpoint's worker class."""

    _log = Logger()

    def __init__(self, name, worker_class, default_config, config, reactor=None,
                 execution_path=DEFAULT_EXECUTION_PATH, notifications=None, schemas=None, guard=None, stalls=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.name = name
        self.worker_class = worker_class
        self.config = config
        self.execution_path = execution_path
        self.stalls = stalls  # a shared.stalls.StallWatch: its figures go in /health
        self._fields_seen = (None, None)  # the last ANSWER_FIELDS_HEADER value and its fields
        self.notifications = notifications or Notifications()
        self.ready = False
        self.load_error = None
        # INPUT_SCHEMA / OUTPUT_SCHEMA of the endpoint file, when it declares them
        check = SchemaCheck(schemas, reactor=reactor) if schemas is not None else None
        self.schema_check = check if check is not None and check.active else None
        # no token, no control: a model server may listen beyond loopback
        self.guard = guard or AdminGuard(require_token=True)
        self._signature_prefix = '{}.{}.{}'.format(host_id(), name, worker_class.__name__)
        # a _predict that yields (or STREAM: true) answers NDJSON, a chunk per line
        self.streaming = worker_class.streams(config) if hasattr(worker_class, 'streams') else False
        compat_log = CompatLogger(lib_name=name)

        def make_worker(index):
            return worker_class(log=compat_log, default_config=default_config, verbosity_level=1,
                                worker_id=index, upstream_config=config, server_name=name,
                                notifications=self.notifications)

        self.pool = WorkerPool(make_worker, size=int(config.get('NR_WORKERS', 1)),
                               max_queue=int(config.get('MAX_QUEUE', DEFAULT_MAX_QUEUE)),
                               reactor=reactor, max_batch_size=int(config.get('MAX_BATCH_SIZE', 1)),
                               batch_timeout=float(config.get('BATCH_TIMEOUT', DEFAULT_BATCH_TIMEOUT)))
        # One Klein app per instance (not the class-attribute idiom): the execution path is a
        # constructor argument, and a class-level route table would be shared by all instances.
        self.app = Klein()
        self.app.route(execution_path, methods=['POST', 'GET'])(self._run)
        self.app.route('/notifications', methods=['GET', 'POST'])(self._notifications)
        self.app.route('/update_workers', methods=['POST'])(self._update_workers)
        self.app.route('/get_paths', methods=['GET', 'POST'])(self._get_paths)
        self.app.route('/health', methods=['GET'])(self._health)
        self.app.handle_errors(Exception)(self._error)

    async def start(self):
        """Load every worker; raises WorkerLoadError (one line) if one cannot load."""
        if self.streaming and self.pool.max_batch_size > 1:
            self.load_error = ('MAX_BATCH_SIZE is {} but _predict streams (it yields, or STREAM is true): a '
                               'streaming endpoint is not batched; set MAX_BATCH_SIZE to 1'.format(self.pool.max_batch_size))
            raise WorkerLoadError(self.load_error)
        try:
            await self.pool.start()
        except WorkerLoadError as exc:
            self.load_error = str(exc)
            raise
        self.ready = True
        self.notifications.add(None, 'LOG', self.name, 'server ready with {} workers'.format(self.pool.size))

    def resource(self):
        return self.app.resource()

    # -- routes --------------------------------------------------------------------------------
    async def _run(self, request):
        tracing.start_request(request, request_id_of(request), self.name)  # ended when the answer is written
        inputs = request_inputs(request)
        if not self.ready:
            raise ServiceUnavailable('server {!r} is still loading its workers; retry shortly'.format(self.name))
        inputs.pop(SIGNATURE, None)
        if self.schema_check is not None:
            pending = self.checked_input(inputs, _body_size(request))
            if pending is not None:
                await pending
        rid = request_id_of(request)
        v2 = take_v2(inputs, self.streaming)  # a V2 infer: its inputs typed, its answer shaped at the end
        if self.streaming:
            worker, call_id, outcome = await self.pool.run_stream(inputs, rid)
            if isinstance(outcome, PooledStream):
                return await self._stream(request, worker, call_id, outcome, rid)
        else:
            worker, call_id, outcome = await self.pool.run(inputs, rid)
        answer_fields = self._decoded_answer_fields(request.getHeader(ANSWER_FIELDS_HEADER))
        status, data, complete = await self.encoded_answer(worker, call_id, outcome, rid, answer_fields, v2)
        if complete:
            request.setHeader(ANSWER_COMPLETE_HEADER, b'1')
        return write_encoded_json(request, status, data)

    async def encoded_answer(self, worker, call_id, outcome, rid, answer_fields, v2=None):
        """``(status, bytes, complete)`` of a call's answer, ``OUTPUT_SCHEMA`` checked, with
        the gateway's ``answer_fields`` in it when given (``complete``: they are; False when the answer
        could not be encoded, and its error is what is sent), shaped by ``v2`` (a V2 infer's
        ``V2Call``) when given."""
        body = dict(outcome.body)
        status = outcome.status
        if status == 200 and self.schema_check is not None:
            try:
                pending = self.schema_check.output_check(body.get('predict_result'))
                if pending is not None:  # a large answer, checked off the reactor thread
                    await pending
            except SchemaViolation as exc:
                self._log.warn('request {rid}: the answer breaks OUTPUT_SCHEMA: {error}', rid=rid, error=exc.message)
                status = 500
                body = {'ERROR': 'OUTPUT_SCHEMA: the endpoint answered {}'.format(exc.message),
                        'OUTPUT_ERROR': exc.details()}
        body.update({
            'worker_id': worker.worker_id,
            'call_id': call_id,
            'batch_size': outcome.batch_size,
            'time': now_text(),
            'signature': '{}.{}'.format(self._signature_prefix, worker.worker_id),
            'request_id': rid,
        })
        if answer_fields is not None:
            body.update(answer_fields)
        if v2 is not None:
            status, body = v2.answer(status, body)
        encoded_status, data = encode_answer(status, body)
        return encoded_status, data, answer_fields is not None and encoded_status == status

    def checked_input(self, inputs, size):
        """``inputs`` against INPUT_SCHEMA: checked now when the body of ``size`` bytes is small
        (None), else the Deferred of its check off the reactor thread; BadRequest naming the
        field when they break it, raised or in the Deferred."""
        try:
            pending = self.schema_check.input_check(inputs, size)
        except SchemaViolation as exc:
            raise _input_refused(exc) from None
        if pending is not None:
            pending.addErrback(_input_failed)
        return pending

    def _decoded_answer_fields(self, value):
        # the gateway sends the same header for a whole second of its uptime: decoded once
        if value != self._fields_seen[0]:
            self._fields_seen = (value, decode_answer_fields(value))
        return self._fields_seen[1]

    def call_fields(self, worker, call_id, rid):
        """This server's fields of a call's answer: who answered it, when, and to which request."""
        return {'worker_id': worker.worker_id, 'call_id': call_id, 'time': now_text(),
                'signature': '{}.{}'.format(self._signature_prefix, worker.worker_id), 'request_id': rid}


    async def _stream(self, request, worker, call_id, stream, rid):
        """Write each chunk as a line as soon as it is made, paced by the connection (a
        client that reads slowly pauses the generator); the last line is the summary, or
        the error that ended the stream. A client that goes away closes the generator."""
        flow = _WriteFlow()
        request.registerProducer(flow, True)
        ended = None
        sent = 0
        stream_span = tracing.start_stream(rid)
        try:
            while True:
                line, ended = await next_line(flow, stream, sent + 1)
                if line is None:
                    break
                line += b'\n'
                if not sent:
                    request.setResponseCode(200)
                    request.setHeader(b'Content-Type', NDJSON_TYPE)
                    request.setHeader(b'Cache-Control', b'no-cache')
                request.write(line)
                sent += 1
        finally:
            # at the end, after an error, or cancelled (the client went away): the generator
            # stops at its next yield and the worker goes back to the pool
            stream.close().addErrback(lambda failure: self._log.failure('closing a stream', failure))
            tracing.end_stream(stream_span, sent, ended.body.get('ERROR') if ended is not None else None)
            if request.channel is not None:  # None: the connection is gone, and its producer with it
                request.unregisterProducer()
        summary = self.call_fields(worker, call_id, rid)
        summary['chunks'] = sent
        if ended is not None:
            self._log.warn('request {rid}: the stream ended with an error after {n} chunks: {error}', rid=rid,
                           n=summary['chunks'], error=ended.body.get('ERROR'))
            body = dict(ended.body, **summary)
            if not summary['chunks']:  # nothing sent yet: an ordinary error answer
                return write_json(request, ended.status, body)
            body['status'] = ended.status  # what the HTTP status would have said
            return dumps_spaced(body) + b'\n'
        if not summary['chunks']:
            request.setResponseCode(200)
            request.setHeader(b'Content-Type', NDJSON_TYPE)
        return dumps_spaced(summary) + b'\n'

    def _notifications(self, request):
        return write_json(request, 200, self.notifications.snapshot())

    async def _update_workers(self, request):
        self.guard.check(request)
        inputs = request_inputs(request)
        if 'NR_WORKERS' not in inputs:
            raise BadRequest('send {"NR_WORKERS": <integer >= 1>}')
        size = inputs['NR_WORKERS']
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        try:
            size = await self.pool.resize(size)
        except WorkerLoadError as exc:
            raise ServiceUnavailable('could not add workers: {}'.format(exc)) from None
        return write_json(request, 200, {'MESSAGE': 'OK', 'NR_WORKERS': size})

    def _get_paths(self, request):
        return write_json(request, 200, {'PATHS': [self.execution_path] + list(SERVER_PATHS)})

    def _health(self, request):
        body = {'STATUS': 'OK' if self.ready else ('FAILED' if self.load_error else 'LOADING'),
                'SERVER': self.name, 'NR_WORKERS': self.pool.size, 'BUSY': self.pool.busy,
                'QUEUED': self.pool.queued, 'PID': os.getpid(), 'ver-lib': LIB_VER,
                'BATCHES': {str(size): count for size, count in sorted(self.pool.batch_sizes.items())}}
        if self.stalls is not None:
            body['STALLS'] = self.stalls.summary()
        if self.load_error:
            body['ERROR'] = self.load_error
        return write_json(request, 200 if self.ready else 503, body)

    def _error(self, request, failure):
        return error_answer(request, failure)


def _body_size(request):
    # what the inputs were read from: the body, or the query of a request without one
    length = request.getHeader(b'content-length')
    if length is None:
        return len(request.uri) if request.getHeader(b'transfer-encoding') is None else None
    return int(length) + len(request.uri) if length.isdigit() else None


async def next_line(flow, stream, number):
    """Chunk ``number`` of ``stream`` once ``flow`` lets it go (``flow.writable()``), as
    ``chunk_line`` gives it; ``(None, None)`` at the stream's end."""
    await flow.writable()
    outcome = await stream.next()
    if outcome is None:
        return None, None
    return chunk_line(outcome, number)


def chunk_line(outcome, number):
    """``(line, None)`` for chunk ``number`` of a stream, its JSON ready to send; or ``(None,
    the error Answer that ends the stream)``: the chunk is an error, or JSON cannot encode it."""
    if outcome.status != 200:
        return None, outcome
    try:
        return dumps_spaced(outcome.body), None
    except (TypeError, ValueError) as exc:
        return None, attr.evolve(outcome, status=500, body={
            'ERROR': 'chunk {} of the stream could not be encoded as JSON: {}'.format(number, exc)})


@implementer(IPushProducer)
class _WriteFlow:
    """The connection's pace for a stream: ``writable()`` fires at once unless the transport
    asked us to pause (its buffer is full), then when it asks us to resume."""

    def __init__(self):
        self._waiting = None
        self.paused = False

    def writable(self):
        if not self.paused:
            return defer.succeed(None)
        if self._waiting is None:
            self._waiting = defer.Deferred()
        return self._waiting

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:  # called: cancelled, the client is gone
            waiting.callback(None)

    def stopProducing(self):
        # the connection is gone: Klein cancels the route, which closes the stream
        self.resumeProducing()


def _input_refused(violation):
    return BadRequest('INPUT_SCHEMA: ' + violation.message, INPUT_ERROR=violation.details())


def _input_failed(failure):
    failure.trap(SchemaViolation)
    raise _input_refused(failure.value)
