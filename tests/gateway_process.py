"""Start the real gateway (``twistd -n -y bis.tac`` or ``bis-gateway``) for end-to-end tests."""

import os
import socket
import sys

import psutil

from procs import REPO_ROOT, TWISTD, get, post, python_env, wait_until

GATEWAY_READY = r'gateway serving on http://'


def free_port_block(size, host='127.0.0.1', start=20000, stop=32000):
    """A port whose next ``size - 1`` ports are free too: the gateway's children count up
    from its port + 1. Searched below Linux's ephemeral range (32768+), where outgoing
    connections of concurrent tests would take ports, wrapping around once. Under
    pytest-xdist each worker searches a slice of its own: blocks found free by two workers
    at once would otherwise overlap once their children bind."""
    start, stop = _worker_slice(start, stop)
    first = start + (os.getpid() * 7) % (stop - start - size)
    candidates = list(range(first, stop - size, size)) + list(range(start, first, size))
    for port in candidates:
        socks = []
        try:
            for p in range(port, port + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError('no block of {} free ports'.format(size))


XDIST_SLICES = 8  # the most workers the suite is run with (-n); more would share slices


def _worker_slice(start, stop):
    worker = os.environ.get('PYTEST_XDIST_WORKER', '')  # 'gw0', 'gw1', ...; unset without xdist
    if not worker.startswith('gw') or not worker[2:].isdigit():
        return start, stop
    width = (stop - start) // XDIST_SLICES
    first = start + width * (int(worker[2:]) % XDIST_SLICES)
    return first, first + width


class GatewayProcess:
    """A running gateway, its port and its children."""

    def __init__(self, proc, port):
        self.proc = proc
        self.port = port

    def url(self, path):
        return 'http://127.0.0.1:{}{}'.format(self.port, path)

    def get(self, path, **kwargs):
        return get(self.url(path), **kwargs)

    def post(self, path, body=None, **kwargs):
        return post(self.url(path), body, **kwargs)

    def run(self, signature, **inputs):
        return self.post('/run', dict(inputs, SIGNATURE=signature))

    def children(self):
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def server(self, name):
        """Server ``name`` in /list_servers, started (AVAIL_SERVERS) or not (STOPPED_SERVERS)."""
        listed = self.get('/list_servers').json()
        return dict(listed['AVAIL_SERVERS'], **listed['STOPPED_SERVERS'])[name]

    def wait_online(self, name, timeout=20):
        return wait_until(lambda: self.server(name), lambda s: s['ONLINE'], timeout=timeout,
                          what='{} ONLINE in /list_servers'.format(name))


def start_gateway(processes, tmp_path, config=None, endpoints=None, use_twistd=True, ports=24,
                  env=None, wait=True, extra_args=(), prefix=()):
    """Start a gateway on a free block of ports; ``config`` is a dict written to a file (the
    repo's config_gateway.txt when None). Waits until it serves."""
    port = free_port_block(ports)
    if config is None:
        config_path = os.path.join(REPO_ROOT, 'config_gateway.txt')
    else:
        import json
        config_path = str(tmp_path / 'config_gateway.txt')
        with open(config_path, 'w') as fh:
            json.dump(config, fh)
    variables = {'BIS_CONFIG': config_path, 'BIS_PORT': str(port), 'BIS_HOST': '127.0.0.1',
                 'BIS_ENDPOINTS': str(endpoints or os.path.join(REPO_ROOT, 'endpoints')),
                 'BIS_CACHE': str(tmp_path / '_cache')}
    variables.update(env or {})
    if use_twistd:
        argv = [TWISTD, '-n', '--pidfile=', '-y', os.path.join(REPO_ROOT, 'bis.tac')]
        proc_env = python_env(variables)
    else:
        argv = [sys.executable, '-m', 'bis_twisted.gateway.cli'] + list(extra_args)
        proc_env = python_env({k: v for k, v in variables.items()})
    # prefix: a command the gateway runs under (``prlimit --nofile=64:64``)
    proc = processes.start(list(prefix) + argv, env=proc_env, cwd=str(tmp_path), name='gateway')
    gateway = GatewayProcess(proc, port)
    if wait:
        proc.wait_for_line(GATEWAY_READY, timeout=30)
    return gateway
