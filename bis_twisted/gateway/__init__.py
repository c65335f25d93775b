"""The gateway: the program users talk to (``bis-gateway``, ``twistd -n -y bis.tac``).

It reads ``config_gateway.txt``, starts one model-server child per endpoint and replica
(``supervisor``, ``fleet``), and answers HTTP (``routes``) by forwarding ``/run`` to a
child (``proxy``). It never imports ``bis_twisted.model_server``: the two agree through
``bis_twisted.protocol`` only.
"""
