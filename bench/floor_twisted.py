#!/usr/bin/env python3
"""The floor of any twisted.web server on this machine: a bare ``Resource`` that answers every
request with a constant JSON object, one process, no limits, no routing, no access log::

    python bench/floor_twisted.py PORT

``bench/peer_bench.py`` measures it beside the gateway in the same run: the gateway's whole hop
(its HTTP server, the call to its child, the child's work) compared with twisted.web alone.
"""

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

ANSWER = b'{"predict_result": 7}'


class Constant(Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b'Content-Type', b'application/json')
        return ANSWER


if __name__ == '__main__':
    site = Site(Constant())
    site.log = lambda request: None
    reactor.listenTCP(int(sys.argv[1]), site, backlog=1024, interface='127.0.0.1')
    reactor.run()
