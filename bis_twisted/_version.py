"""The version of bis_twisted, in one place (``pyproject.toml`` reads it from here too)."""

__version__: str = '0.1.0'
