"""Find a user's worker class in ``endpoints/<name>.py``.

The class is named after the file: underscores removed, plus ``Worker``, compared without
case (``dummy_model_demo2.py`` -> ``DummyModelDemo2Worker``). Every way a file can be
unusable raises ``EndpointLoadError`` with one line naming the file and what is wrong.
"""

import attr

from ..errors import EndpointLoadError
from ..protocol import WORKER_SUFFIX, endpoint_file, expected_class_name
from ..shared.schemas import EndpointSchemas, module_schemas
from ..shared.userfile import load_module
from ..worker import FlaskWorker


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
