"""Fixtures shared by the tests: started processes that are always killed, and a folder of
endpoint files written by the test itself; and the ``e2e`` marker on every test that starts
real processes, so that ``pytest -m "not e2e"`` is the fast unit tier."""

import functools
import inspect
import textwrap

import pytest
from twisted.logger import globalLogPublisher

from fakes import children, make_fleet, reactor  # noqa: F401 (the unit tests' fleet fixtures, from fakes)
from procs import Processes

# A test starts real processes (a gateway, a model server, a browser, mypy) when it or one of
# its fixtures uses one of these fixtures, or names one of these words in its own code.
E2E_FIXTURES = frozenset(['processes', 'module_processes'])
E2E_WORDS = ('subprocess', 'Processes(', 'start_gateway(', 'start_model_server(', 'webdriver', 'run_mypy(',
             'mypy.api')


@functools.lru_cache(maxsize=None)
def _starts_processes(function, depth=2):
    """Whether ``function``, or a helper of its test module that it calls, names an E2E word."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    if any(word in source for word in E2E_WORDS):
        return True
    if depth == 0:
        return False
    module = inspect.getmodule(function)
    helpers = [getattr(module, name, None) for name in getattr(getattr(function, '__code__', None), 'co_names', ())]
    return any(inspect.isfunction(h) and inspect.getmodule(h) is module and _starts_processes(h, depth - 1)
               for h in helpers)


def _is_e2e(item):
    if item.path.name.endswith('_e2e.py') or E2E_FIXTURES & set(getattr(item, 'fixturenames', ())):
        return True
    functions = [getattr(item, 'function', None)]
    info = getattr(item, '_fixtureinfo', None)
    for definitions in (info.name2fixturedefs.values() if info is not None else ()):
        functions += [d.func for d in definitions if 'tests' in getattr(d.func, '__module__', '') or
                      getattr(d, 'baseid', '').startswith('tests')]
    return any(f is not None and _starts_processes(f) for f in functions)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def processes():
    """Start processes with ``processes.start(argv)`` / ``processes.python(...)``; every one is
    killed with its whole process group when the test ends, passed or failed."""
    with Processes() as group:
        yield group


@pytest.fixture(scope='module', params=('twisted', 'httptools'))
def http_front(request):
    """The HTTP front of the gateway's port (``BIS_HTTP_FRONT``): a module whose gateways take
    it runs each of their tests on both fronts, twisted.web's and httptools'."""
    return request.param


@pytest.fixture(autouse=True)
def _hypothesis_test_unwrapped(request):
    """pytest-twisted wraps a hypothesis test by replacing its ``inner_test`` in place, at each
    run: the second run of the same test (its other ``http_front``) would nest the wrapper in
    itself and fail. Each run gets the original back afterwards."""
    handle = getattr(request.function, 'hypothesis', None)
    original = getattr(handle, 'inner_test', None)
    yield
    if original is not None:
        handle.inner_test = original


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
