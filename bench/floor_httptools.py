#!/usr/bin/env python3
"""The floor of an HTTP/1.1 channel on ``httptools`` (llhttp, the parser uvicorn uses) inside a
Twisted protocol, answering every request with the same constant as ``floor_twisted.py``::

    python bench/floor_httptools.py PORT

A measurement, not a server: no limits, no deadlines, no chunked bodies answered. It says how
far below twisted.web's own floor (``HTTPChannel`` + ``Site`` + ``Request``) the front leg's
per-request work could go with the parser swapped, before any of the hostile-client limits
are put back.
"""

import sys

import httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

ANSWER = b'{"predict_result": 7}'
RESPONSE = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' % len(ANSWER)) + ANSWER


class Channel(Protocol):
    def connectionMade(self):
        self._parser = httptools.HttpRequestParser(self)
        self._body = []

    def on_body(self, body):
        self._body.append(body)

    def on_message_complete(self):
        self._body = []
        self.transport.write(RESPONSE)
        if not self._parser.should_keep_alive():
            self.transport.loseConnection()

    def dataReceived(self, data):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
            self.transport.loseConnection()


if __name__ == '__main__':
    reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(Channel), backlog=1024, interface='127.0.0.1')
    reactor.run()
