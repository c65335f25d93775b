# The project's metadata, dependencies and entry points are in pyproject.toml (PEP 621);
# this file stays for tools and habits that run `python setup.py` or look for it.
from setuptools import setup

setup()
