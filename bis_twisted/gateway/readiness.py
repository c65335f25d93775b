"""What ``/ready`` answers besides its plain form (every enabled server answers now).

- ``/ready?SCOPE=gateway``: the gateway's own readiness, "I can route": 200 while at least one
  endpoint has a target ready to take a request, by what the gateway already knows
  (its children's ready lines, the health checks of remote servers), without asking anyone.
  This is the probe that keeps a gateway in a load balancer: one sick model server does not
  take every endpoint out with it.
- ``/ready?SIGNATURE=<endpoint>``: that endpoint alone, measured now (a ``/health`` call to
  each of its targets): 200 when one answers, 503 saying why not, 404 for an unknown name.

``answer`` returns ``(status, body, headers)`` for these forms and None for the plain one.
"""

from ..errors import BadRequest
from ..protocol import SIGNATURE

SCOPE = 'SCOPE'
GATEWAY_SCOPE = 'gateway'
RETRY_AFTER = {b'Retry-After': b'1'}


def _arg(request, name):
    values = request.args.get(name.encode('ascii'))
    if not values:
        return None
    return values[-1].decode('utf-8', 'replace')


def routable(fleet):
    """Names of the endpoints with a target that can take a request now."""
    return sorted(server.name for server in fleet.servers.values()
                  if not server.config.is_support and any(target.active and fleet.target_ready(target) for target in server.targets))


def gateway_answer(fleet):
    ready = routable(fleet)
    if ready:
        return 200, {'READY': True, 'SCOPE': GATEWAY_SCOPE, 'ROUTABLE': ready}, None
    return 503, {'READY': False, 'SCOPE': GATEWAY_SCOPE, 'ROUTABLE': [],
                 'ERROR': 'no endpoint can take a request yet; GET /list_servers shows why'}, RETRY_AFTER


async def endpoint_answer(fleet, name):
    server = fleet.server(name)  # UnknownSignature (404) names the known ones
    answers = await fleet.ping_server(server)
    if any(answer is not None for answer in answers):
        return 200, {'READY': True, SIGNATURE: name}, None
    return 503, {'READY': False, SIGNATURE: name, 'ERROR': fleet.unavailable(server).message}, RETRY_AFTER


async def answer(fleet, request):
    """The answer of ``/ready`` with a ``SCOPE`` or ``SIGNATURE`` argument, or None."""
    scope, name = _arg(request, SCOPE), _arg(request, SIGNATURE)
    if scope is not None:
        if scope != GATEWAY_SCOPE:
            raise BadRequest('/ready: SCOPE must be {!r} (the gateway can route), got {!r}'.format(
                GATEWAY_SCOPE, scope))
        return gateway_answer(fleet)
    if name is not None:
        return await endpoint_answer(fleet, name)
    return None
