"""``Gateway``: the Klein routes of the gateway (``/run``, ``/list_servers``, ``/health``,
``/ready``, status and admin routes). Routes raise our errors; ``_error`` answers them."""

import os
import socket

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger

from . import LIB_VER
from .errors import BadRequest
from .fleet import hms
from .web import dumps, error_answer, now_text, request_inputs, write_json

SIGNATURE = 'SIGNATURE'


class Gateway:
    """The HTTP face of the gateway. ``fleet`` routes to the model servers."""

    app = Klein()
    _log = Logger()

    def __init__(self, fleet, reactor=None, app_version=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.fleet = fleet
        self.started_at = reactor.seconds()
        self._static_fields = {
            'ver-app': app_version or os.environ.get('BIS_APP_VER') or LIB_VER,
            'ver-lib': LIB_VER,
            'hostname': socket.gethostname(),
        }

    def resource(self):
        return self.app.resource()

    def fields(self, worker_id='unknown'):
        """What every answer of the gateway carries."""
        fields = dict(self._static_fields)
        fields['worker_id'] = worker_id
        fields['time'] = now_text()
        fields['gw-uptime'] = hms(self._reactor.seconds() - self.started_at)
        return fields

    def answer(self, request, status, body, headers=None):
        body.update(self.fields(body.get('worker_id', 'unknown')))
        return write_json(request, status, body, headers)

    @staticmethod
    def signature_of(inputs):
        if SIGNATURE not in inputs:
            raise BadRequest('SIGNATURE is missing; send {{"SIGNATURE": "<endpoint>", ...}} '
                             '(GET /list_servers lists the endpoints)'.format())
        signature = inputs[SIGNATURE]
        if not isinstance(signature, str):
            raise BadRequest('SIGNATURE must be a string, not {}'.format(type(signature).__name__))
        return signature

    # -- /run ------------------------------------------------------------------------------------
    @app.route('/run', methods=['POST', 'GET'])
    async def run(self, request):
        inputs = request_inputs(request)
        signature = self.signature_of(inputs)
        result = await self.fleet.run(signature, dumps(inputs))
        headers = {b'Retry-After': b'1'} if result.status == 503 else None
        return self.answer(request, result.status, dict(result.body), headers)

    # -- fleet views -----------------------------------------------------------------------------
    @app.route('/list_servers', methods=['GET', 'POST'])
    async def list_servers(self, request):
        now = self._reactor.seconds()
        names = list(self.fleet.servers)
        described = await defer.gatherResults([
            defer.Deferred.fromCoroutine(self.fleet.describe(self.fleet.servers[name], now)) for name in names])
        servers = dict(zip(names, described))
        return self.answer(request, 200, {'AVAIL_SERVERS': servers})

    @app.route('/health', methods=['GET'])
    def health(self, request):
        return self.answer(request, 200, {'STATUS': 'OK'})

    @app.route('/ready', methods=['GET'])
    async def ready(self, request):
        unready = await self.fleet.unready()
        if unready:
            return self.answer(request, 503, {'READY': False, 'NOT_READY': unready,
                                              'ERROR': 'not answering: {}'.format(', '.join(unready))},
                               {b'Retry-After': b'1'})
        return self.answer(request, 200, {'READY': True, 'NOT_READY': []})

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return error_answer(request, failure, extra_fields=self.fields)
