"""``python -m bis_twisted.server``: the model server's former path, kept for scripts that
start a server alone with it; the code is in ``bis_twisted.model_server``."""

if __name__ == '__main__':
    from bis_twisted.model_server.service import main

    main()
