#!/usr/bin/env python3
"""Streaming through the gateway vs straight to the model server, in one run:

    python bench/stream_bench.py                    # 200 first-chunk probes, 3 long streams
    python bench/stream_bench.py --probes 50 --chunks 5000

Starts the real gateway (``bis-gateway``) with ``bench/endpoints/token_stream.py`` (a
``_predict`` that yields as fast as it can) and measures, direct and through the gateway,
interleaved so machine noise hits both alike:

- time to first chunk: from sending a request for a 2-chunk stream to reading its first line
  (p50 and p99 of ``--probes`` requests on a kept-alive connection);
- chunks/s of one long stream of ``--chunks`` chunks read to its end (the median of
  ``--rounds``).

Prints a table and writes it as JSON under bench/results/.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench as rb  # noqa: E402  (the gateway launcher)

NAME = 'token_stream'


class LineReader:
    """A kept-alive HTTP/1.1 connection that reads a chunked NDJSON answer line by line."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.path = parts.path or '/run'
        self.sock = socket.create_connection((parts.hostname, parts.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile('rb')

    def send(self, body):
        data = json.dumps(body).encode()
        self.sock.sendall('POST {} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n'
                          'Content-Length: {}\r\n\r\n'.format(self.path, len(data)).encode() + data)
        while self.file.readline() not in (b'\r\n', b''):  # status line and headers
            pass

    def lines(self):
        """The answer's lines, as they come (HTTP chunk framing removed)."""
        pending = b''
        while True:
            size = int(self.file.readline().strip(), 16)
            if size == 0:
                self.file.readline()
                break
            pending += self.file.read(size)
            self.file.readline()
            *complete, pending = pending.split(b'\n')
            for line in complete:
                yield line

    def close(self):
        self.file.close()
        self.sock.close()


def first_chunk_ms(url, probes):
    reader = LineReader(url)
    samples = []
    try:
        for _ in range(probes):
            started = time.perf_counter()
            reader.send({'SIGNATURE': NAME, 'NR_CHUNKS': 2})
            lines = reader.lines()
            next(lines)
            samples.append((time.perf_counter() - started) * 1000)
            for _rest in lines:
                pass
    finally:
        reader.close()
    samples.sort()
    return {'p50_ms': round(statistics.median(samples), 3),
            'p99_ms': round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3)}


def chunks_per_second(url, chunks):
    reader = LineReader(url)
    try:
        started = time.perf_counter()
        reader.send({'SIGNATURE': NAME, 'NR_CHUNKS': chunks})
        count = sum(1 for line in reader.lines() if line.startswith(b'{"predict_result"'))
        took = time.perf_counter() - started
    finally:
        reader.close()
    assert count == chunks, (count, chunks)
    return chunks / took


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--probes', type=int, default=200)
    parser.add_argument('--chunks', type=int, default=20000)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix='bis-stream-bench-')
    config = {'CONFIG_ENDPOINTS': {NAME: {'NR_WORKERS': 1, 'TIMEOUT': 60}}}
    gateway = rb.Gateway(config, os.path.join(HERE, 'endpoints'), workdir)
    try:
        urls = {'direct': rb.direct_url(gateway, NAME), 'gateway': gateway.url + '/run'}
        for url in urls.values():  # warm both paths
            first_chunk_ms(url, 20)
        rows = {where: {'first_chunk': None, 'chunks_per_s': []} for where in urls}
        for where, url in urls.items():
            rows[where]['first_chunk'] = first_chunk_ms(url, args.probes)
        for _ in range(args.rounds):
            for where, url in urls.items():
                rows[where]['chunks_per_s'].append(chunks_per_second(url, args.chunks))
        for row in rows.values():
            row['chunks_per_s'] = round(statistics.median(row['chunks_per_s']))
    finally:
        gateway.stop()
    print('{:<8} {:>14} {:>14} {:>12}'.format('path', 'TTFC p50 ms', 'TTFC p99 ms', 'chunks/s'))
    for where, row in rows.items():
        print('{:<8} {:>14} {:>14} {:>12}'.format(where, row['first_chunk']['p50_ms'], row['first_chunk']['p99_ms'],
                                                  row['chunks_per_s']))
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    out = os.path.join(HERE, 'results', 'stream-{}.json'.format(time.strftime('%Y%m%d-%H%M%S')))
    with open(out, 'w') as fh:
        json.dump({'probes': args.probes, 'chunks': args.chunks, 'rounds': args.rounds, 'rows': rows}, fh, indent=2)
    print('written', out)


if __name__ == '__main__':
    main()
