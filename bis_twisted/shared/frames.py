"""The inner leg's frames: how the gateway and its own model servers talk over the Unix socket
they share, without HTTP.

A framed connection starts with ``MAGIC`` (the model server tells it from an HTTP request by
these bytes), then carries length-prefixed frames both ways (``Int32StringReceiver``). Each
frame is ``kind`` (one byte), the request's number on this connection (4 bytes), then its
payload, so one connection carries many requests at once. The gateway's frames of one reactor
turn leave in one send (the transport's buffer is flushed when the reactor next waits), except
a frame of the connection's only request, which leaves at once (``send_frame(now=True)``): no
other frame of that turn would share its send, and waiting for the reactor's next turn only
adds latency (a lone client's). A model server's answers leave at once too: they come from
its worker threads one or two at a time, and a send now costs less than the two ``epoll_ctl``
of a send left to the reactor's next turn.

Gateway to model server:

- ``REQUEST``: ``header`` (JSON: the request id, the gateway's answer fields, the largest
  answer or stream chunk the gateway takes, and the hop span's ``traceparent`` when tracing
  is on) and the inputs' JSON body;
- ``CANCEL``: the gateway's client went away, or the deadline passed: a queued request is
  dropped, a running stream's generator closed;
- ``CREDIT``: the bytes more of a stream's chunks the gateway takes. A stream may send
  ``STREAM_WINDOW`` bytes of chunks before its first credit; the gateway gives credit back
  only for what it has passed on to its client while that client's connection takes more,
  so a slow client holds at most a window (and the client connection's buffer) of a stream
  in the gateway, however late a reactor turn comes.

Model server to gateway:

- ``ANSWER``: status, whether the gateway's fields are in (then it is passed on as it is), body;
- ``STREAM``: a streaming answer begins (its status); ``CHUNK``: one line of it; ``END``: its
  last line (the summary, or the error that ended it);
- ``TOO_LARGE``: the answer (or a chunk) is over the gateway's cap; nothing of it is sent.
"""

import struct

from twisted.protocols.basic import Int32StringReceiver

from .twisted_private import send_now

MAGIC = b'BIS-FRAMES/1\n'

REQUEST, CANCEL, CREDIT = 1, 2, 5
ANSWER, STREAM, CHUNK, END, TOO_LARGE = 10, 11, 12, 13, 14

_HEAD = struct.Struct('!BI')  # kind, request number
_REQUEST = struct.Struct('!H')  # header length
_ANSWER = struct.Struct('!HB')  # status, complete
_STATUS = struct.Struct('!H')
_CREDIT = struct.Struct('!I')
FRAME_OVERHEAD = 64 * 1024  # a frame's bytes besides its body: header fields, its head
STREAM_WINDOW = 256 * 1024  # the bytes of chunks a stream may send ahead of the gateway's credit


class FrameError(ValueError):
    """A frame that does not parse: the connection it came on is dropped."""


class FrameReceiver(Int32StringReceiver):
    """Frames in and out; ``frame_received(kind, number, payload)`` for each frame in.

    ``MAX_LENGTH`` bounds a frame (a body or an answer plus ``FRAME_OVERHEAD``): a longer one
    drops the connection before it is buffered."""

    def stringReceived(self, data):
        if len(data) < _HEAD.size:
            raise FrameError('a frame of {} bytes'.format(len(data)))
        kind, number = _HEAD.unpack_from(data)
        self.frame_received(kind, number, memoryview(data)[_HEAD.size:])

    def frame_received(self, kind, number, payload):
        raise NotImplementedError

    def send_frame(self, kind, number, *parts, now=False):
        """One frame: into the transport's buffer, or with ``now`` at once when nothing waits
        there (``send_now``)."""
        size = _HEAD.size + sum(len(p) for p in parts)
        head = (struct.pack('!I', size), _HEAD.pack(kind, number))
        if now:
            send_now(self.transport, b''.join(head + parts))
        else:
            self.transport.writeSequence(head + parts)


def request_parts(header, body):
    return _REQUEST.pack(len(header)), header, body


def split_request(payload):
    """``(header bytes, body bytes)`` of a ``REQUEST`` payload."""
    if len(payload) < _REQUEST.size:
        raise FrameError('a request frame without its header')
    (size,) = _REQUEST.unpack_from(payload)
    end = _REQUEST.size + size
    if len(payload) < end:
        raise FrameError('a request frame shorter than its header')
    return bytes(payload[_REQUEST.size:end]), bytes(payload[end:])


def answer_parts(status, complete, body):
    return _ANSWER.pack(status, 1 if complete else 0), body


def split_answer(payload):
    """``(status, complete, body bytes)`` of an ``ANSWER`` payload."""
    if len(payload) < _ANSWER.size:
        raise FrameError('an answer frame without its status')
    status, complete = _ANSWER.unpack_from(payload)
    return status, bool(complete), bytes(payload[_ANSWER.size:])


def status_part(status):
    return _STATUS.pack(status)


def split_status(payload):
    if len(payload) < _STATUS.size:
        raise FrameError('a frame without its status')
    return _STATUS.unpack_from(payload)[0]


def credit_part(size):
    return _CREDIT.pack(size)


def split_credit(payload):
    if len(payload) < _CREDIT.size:
        raise FrameError('a credit frame without its size')
    return _CREDIT.unpack_from(payload)[0]
