"""bis_twisted: an inference server gateway on the Twisted reactor.

Endpoint files import ``FlaskWorker`` (or ``Worker``) from here, as they imported it from
``basic_inference_server``.
"""

__version__ = '0.1.0'
LIB_VER = __version__

from .worker import FlaskWorker, Worker  # noqa: E402
from .logger import Logger  # noqa: E402
from .compat import FlaskGateway, get_packages  # noqa: E402

__all__ = ['FlaskWorker', 'Worker', 'Logger', 'FlaskGateway', 'get_packages', 'LIB_VER', '__version__']
