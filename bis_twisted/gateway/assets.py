"""Files the gateway serves as they are: the status page's (``static/``, uPlot vendored with
its licence) and Swagger UI's for ``/docs`` (from the ``swagger-ui-bundle`` package). Only the
names listed here are served, read once and kept in memory: nothing from the internet, no
directory listing, no path from the request reaches the file system."""

import importlib.resources
import os

CONTENT_TYPES = {
    '.html': b'text/html; charset=utf-8',
    '.js': b'application/javascript; charset=utf-8',
    '.css': b'text/css; charset=utf-8',
    '.png': b'image/png',
    '': b'text/plain; charset=utf-8',
    '.md': b'text/plain; charset=utf-8',
}

STATIC_FILES = ('uplot/uPlot.iife.min.js', 'uplot/uPlot.min.css', 'uplot/LICENSE', 'uplot/README.md')
SWAGGER_FILES = ('swagger-ui.css', 'swagger-ui-bundle.js', 'favicon-32x32.png', 'favicon-16x16.png')


def content_type(name):
    return CONTENT_TYPES.get(os.path.splitext(name)[1], b'application/octet-stream')


def package_file(name):
    """The bytes of ``bis_twisted/gateway/static/<name>``."""
    return importlib.resources.files(__package__).joinpath('static/' + name).read_bytes()


class Assets:
    """``get(group, name)`` -> ``(content type, bytes)`` or None. ``swagger_error`` says why
    ``/docs`` cannot be served (the package missing), None when it can."""

    def __init__(self):
        self._files = {('static', name): package_file(name) for name in STATIC_FILES}
        self._files[('page', 'docs.html')] = package_file('docs.html')  # at /docs only: its URLs are relative
        self.swagger_error = None
        try:
            from swagger_ui_bundle import swagger_ui_path
        except ImportError:
            self.swagger_error = ('/docs needs the swagger-ui-bundle package, which is not installed: '
                                  'pip install swagger-ui-bundle')
            return
        for name in SWAGGER_FILES:
            with open(os.path.join(swagger_ui_path, name), 'rb') as fh:
                self._files[('docs', name)] = fh.read()

    def get(self, group, name):
        data = self._files.get((group, name))
        return None if data is None else (content_type(name), data)
