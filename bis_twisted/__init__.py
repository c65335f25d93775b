"""bis_twisted: an inference server: a gateway in front of model-server processes.

This package is what endpoint files import, as they imported ``basic_inference_server``::

    from bis_twisted import FlaskWorker

The two programs live in their own folders: ``bis_twisted.gateway`` (the HTTP front, the
supervisor of the children) and ``bis_twisted.model_server`` (one child: a user's workers);
``bis_twisted.shared`` is the HTTP plumbing both use and ``bis_twisted.protocol`` what they
agree on. The names below are imported on first use, so that the gateway, which imports
this package too, never loads the worker side.
"""

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from ._version import __version__

if TYPE_CHECKING:  # what a type checker sees of the names __getattr__ imports on first use
    from .compat import FlaskGateway as FlaskGateway, get_packages as get_packages  # noqa: F401
    from .logger import Logger as Logger  # noqa: F401
    from .worker import FlaskWorker as FlaskWorker, Worker as Worker  # noqa: F401

LIB_VER: str = __version__

_EXPORTS: Dict[str, str] = {
    'FlaskWorker': 'bis_twisted.worker',
    'Worker': 'bis_twisted.worker',
    'Logger': 'bis_twisted.logger',
    'FlaskGateway': 'bis_twisted.compat',
    'get_packages': 'bis_twisted.compat',
}

__all__: List[str] = list(_EXPORTS) + ['LIB_VER', '__version__']


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError('module {!r} has no attribute {!r}'.format(__name__, name))
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
