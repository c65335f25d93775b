"""The client as a distribution of its own (``bis_twisted/client/pyproject.toml``): installed
alone in a fresh venv it brings httpx and nothing of the server, a user's code that imports it
passes ``mypy --strict``, and ``Client.run`` refuses a streaming answer, pointing to ``stream``."""

import os
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest

from bis_twisted._version import __version__
from bis_twisted.client import AsyncClient, Client, StreamingAnswer
from gateway_process import start_gateway
from procs import REPO_ROOT

CLIENT_DIR = os.path.join(REPO_ROOT, 'bis_twisted', 'client')

USER_CODE = '''
    from typing import Any, Dict, List

    from bis_twisted.client import BisClientError, Client, Overloaded


    def labels(url: str, rows: List[List[float]]) -> List[str]:
        found: List[str] = []
        with Client(url, retries=2) as bis:
            for row in rows:
                try:
                    answer: Dict[str, Any] = bis.run('iris_classifier', FEATURES=row)
                except Overloaded as exc:
                    found.append('busy {}'.format(exc.retry_after))
                    continue
                except BisClientError as exc:
                    found.append(exc.error)
                    continue
                found.append(str(answer['predict_result']))
            for word in bis.stream('text_streamer', PROMPT='a'):
                found.append(str(word))
        return found
'''


@pytest.fixture(scope='module')
def client_venv(tmp_path_factory):
    """A fresh venv with ``pip install ./bis_twisted/client`` done from a clone's layout."""
    root = tmp_path_factory.mktemp('client_dist')
    clone = root / 'clone'
    shutil.copytree(CLIENT_DIR, str(clone / 'bis_twisted' / 'client'),
                    ignore=shutil.ignore_patterns('build', '*.egg-info', '__pycache__'))
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=120)
    python = str(venv / 'bin' / 'python')
    done = subprocess.run([python, '-m', 'pip', 'install', '-q', './bis_twisted/client'], cwd=str(clone),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def installed(python):
    listed = subprocess.run([python, '-m', 'pip', 'list', '--format=freeze'], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    return {line.split('==')[0].lower().replace('_', '-') for line in listed.splitlines() if line}


@pytest.mark.e2e
def test_installed_alone_it_brings_httpx_and_nothing_of_the_server(client_venv):
    names = installed(client_venv)
    # httpx and what httpx itself needs; pip and setuptools come with every venv
    assert names <= {'bis-twisted-client', 'httpx', 'httpcore', 'h11', 'anyio', 'sniffio', 'idna', 'certifi',
                     'typing-extensions', 'exceptiongroup', 'pip', 'setuptools'}, names
    assert {'bis-twisted-client', 'httpx'} <= names
    assert not names & {'twisted', 'klein', 'treq', 'jsonschema', 'swagger-ui-bundle', 'psutil', 'bis-twisted'}
    done = subprocess.run([client_venv, '-c', textwrap.dedent('''
        import sys
        from bis_twisted.client import AsyncClient, Client, StreamingAnswer
        import bis_twisted.client as client
        print(client.__file__)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'klein', 'treq', 'zope')))
    ''')], capture_output=True, text=True, timeout=60, cwd='/')
    assert done.returncode == 0, done.stderr
    where, server_modules = done.stdout.splitlines()
    assert where.startswith(os.path.dirname(os.path.dirname(client_venv))) and server_modules == '[]'


@pytest.mark.e2e
def test_a_users_file_importing_it_passes_mypy_strict(client_venv, tmp_path):
    user = tmp_path / 'user_code.py'
    user.write_text(textwrap.dedent(USER_CODE))
    # the venv's packages as a user's type checker finds them: the client's py.typed makes it typed
    done = subprocess.run([sys.executable, '-m', 'mypy', '--strict', '--python-executable', client_venv,
                           '--no-incremental', '--cache-dir', os.devnull, str(user)], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Success' in done.stdout


def test_the_distributions_version_is_bis_twisteds():
    with open(os.path.join(CLIENT_DIR, 'pyproject.toml'), encoding='utf-8') as fh:
        lines = [line.strip() for line in fh]
    assert 'version = "{}"'.format(__version__) in lines
    assert 'dependencies = ["httpx>=0.24"]' in lines


def ndjson_transport():
    def handler(request):
        return httpx.Response(200, headers={'Content-Type': 'application/x-ndjson'},
                              content=b'{"chunk":1,"predict_result":"a"}\n{"chunks":1}\n')
    return httpx.MockTransport(handler)


def test_run_on_a_streaming_answer_raises_a_clear_error_pointing_to_stream():
    with Client('http://gw', transport=ndjson_transport()) as bis:
        with pytest.raises(StreamingAnswer) as raised:
            bis.run('text_streamer', TEXT='hello')
        assert list(bis.stream('text_streamer', TEXT='hello')) == ['a']
    assert raised.value.status == 200
    assert raised.value.error == ("'text_streamer' streams its answer (application/x-ndjson); read it with "
                                  "Client.stream('text_streamer', ...) (AsyncClient.stream), which yields each chunk "
                                  "as it comes")

    import asyncio

    async def scenario():
        async with AsyncClient('http://gw', transport=ndjson_transport_async()) as bis:
            await bis.run('text_streamer')

    with pytest.raises(StreamingAnswer):
        asyncio.run(scenario())


def ndjson_transport_async():
    async def handler(request):
        return httpx.Response(200, headers={'Content-Type': 'application/x-ndjson'}, content=b'{"chunks":0}\n')
    return httpx.MockTransport(handler)


@pytest.mark.e2e
def test_run_on_the_real_streaming_endpoint_refuses_and_stream_reads_it(processes, tmp_path):
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'text_streamer', 'CONFIG_ENDPOINTS': {
        'text_streamer': {'NR_WORKERS': 1, 'WORD_DELAY': 0.0}}}
    gateway = start_gateway(processes, tmp_path, config=config, use_twistd=False, ports=8)
    with Client(gateway.url('')) as bis:
        with pytest.raises(StreamingAnswer) as raised:
            bis.run('text_streamer', PROMPT='one', NR_WORDS=3)
        assert 'Client.stream' in raised.value.error
        words = list(bis.stream('text_streamer', PROMPT='one', NR_WORDS=3))
        assert words and bis.health()['STATUS'] == 'OK'  # the refused stream left the gateway well
