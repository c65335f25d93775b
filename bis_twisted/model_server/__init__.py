"""The model server: one child process holding ``NR_WORKERS`` instances of a user's worker class.

``python -m bis_twisted.model_server`` runs it (the gateway spawns it so, with the flags of
``bis_twisted.protocol.CHILD_FLAGS``); ``loader`` finds the worker class, ``pool`` runs
the workers in threads, ``app`` is its HTTP routes, ``service`` its life as a process. It
never imports ``bis_twisted.gateway``.
"""
