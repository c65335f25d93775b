"""Find a user's worker class in ``endpoints/<name>.py``.

The class is named after the file: underscores removed, plus ``Worker``, compared without
case (``dummy_model_demo2.py`` -> ``DummyModelDemo2Worker``). Every way a file can be
unusable raises ``EndpointLoadError`` with one line naming the file and what is wrong.
"""

import importlib.util
import os
import sys

import attr

from .errors import EndpointLoadError
from .schemas import EndpointSchemas, module_schemas
from .worker import FlaskWorker

WORKER_SUFFIX = 'Worker'


def endpoint_file(endpoints_dir, server_class):
    return os.path.join(endpoints_dir, server_class + '.py')


def expected_class_name(server_class, suffix=WORKER_SUFFIX):
    # spelled as users write it (dummy_model_demo2 -> DummyModelDemo2Worker); matched without case
    return ''.join(part[:1].upper() + part[1:] for part in server_class.split('_')) + suffix


def load_module(path, module_name=None):
    """Import the file at ``path`` as a module of its own (not via ``sys.path``)."""
    if not os.path.isfile(path):
        raise EndpointLoadError('{}: endpoint file does not exist'.format(path))
    module_name = module_name or '_bis_endpoint_' + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise EndpointLoadError('{}:{}: syntax error: {}'.format(path, exc.lineno, exc.msg)) from None
    except ImportError as exc:
        raise EndpointLoadError('{}: import failed: {}'.format(path, exc)) from None
    except Exception as exc:  # any error at import time of user code is reported, one line
        raise EndpointLoadError('{}: error while importing: {}: {}'.format(
            path, type(exc).__name__, exc)) from None
    return module


def find_class(module, path, server_class, suffix=WORKER_SUFFIX):
    wanted = expected_class_name(server_class, suffix).lower()
    for name, value in vars(module).items():
        if isinstance(value, type) and name.lower() == wanted:
            return value
    raise EndpointLoadError('{}: no class named {} (the file name without underscores + {!r}, any case)'.format(
        path, expected_class_name(server_class, suffix), suffix))


@attr.s(frozen=True)
class Endpoint:
    """What an endpoint file gives the model server: its worker class, its ``_CONFIG`` and
    its declared ``INPUT_SCHEMA`` / ``OUTPUT_SCHEMA`` (checked to be valid JSON Schemas)."""

    worker_class = attr.ib()
    default_config = attr.ib()
    schemas = attr.ib(factory=EndpointSchemas)


def load_endpoint(endpoints_dir, server_class, suffix=WORKER_SUFFIX):
    """Import ``endpoints_dir/server_class.py`` and return its ``Endpoint``, or raise
    ``EndpointLoadError`` with one line naming the file and what is wrong."""
    path = endpoint_file(endpoints_dir, server_class)
    module = load_module(path)
    cls = find_class(module, path, server_class, suffix)
    if not issubclass(cls, FlaskWorker):
        raise EndpointLoadError('{}: class {} does not subclass bis_twisted.FlaskWorker'.format(path, cls.__name__))
    default_config = getattr(module, '_CONFIG', {}) or {}
    if not isinstance(default_config, dict):
        raise EndpointLoadError('{}: _CONFIG must be a dict, not {}'.format(path, type(default_config).__name__))
    return Endpoint(cls, dict(default_config), module_schemas(module, path))


def load_worker_class(endpoints_dir, server_class, suffix=WORKER_SUFFIX):
    """Return ``(worker_class, default_config)`` for ``endpoints_dir/server_class.py``."""
    endpoint = load_endpoint(endpoints_dir, server_class, suffix)
    return endpoint.worker_class, endpoint.default_config
