"""``python -m bis_twisted.model_server``: run one model server."""

from .service import main

if __name__ == '__main__':
    main()
