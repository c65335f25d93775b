"""Import a user's Python file (an endpoint file, a support monitor) as a module of its own.

Every way the import can fail raises ``EndpointLoadError`` with one line naming the file.
"""

import importlib.util
import os
import sys

from ..errors import EndpointLoadError


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
