"""Fixtures shared by the tests: started processes that are always killed, and a folder of
endpoint files written by the test itself."""

import textwrap

import pytest
from twisted.logger import globalLogPublisher

from procs import Processes


@pytest.fixture
def processes():
    """Start processes with ``processes.start(argv)`` / ``processes.python(...)``; every one is
    killed with its whole process group when the test ends, passed or failed."""
    with Processes() as group:
        yield group


@pytest.fixture(scope='module')
def module_processes():
    """Like ``processes``, for servers that a whole test module shares."""
    with Processes() as group:
        yield group


class EndpointFolder:
    """An ``endpoints/`` folder in tmp_path; ``write(name, source)`` adds ``<name>.py``."""

    def __init__(self, path):
        self.path = path

    def write(self, name, source):
        path = self.path / (name + '.py')
        path.write_text(textwrap.dedent(source), encoding='utf-8')
        return path


@pytest.fixture
def endpoint_folder(tmp_path):
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    return EndpointFolder(folder)


@pytest.fixture
def log_events():
    """Every twisted.logger event emitted during the test."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
