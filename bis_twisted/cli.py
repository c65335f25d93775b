"""``bis_twisted.cli:main``: the gateway's former entry point, kept for installs and scripts
that name it; the code is in ``bis_twisted.gateway.cli``."""

from bis_twisted.gateway.cli import main, run

__all__ = ['main', 'run']

if __name__ == '__main__':
    main()
