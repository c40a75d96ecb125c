"""The command line, ``python -m densenet_demo ...``: the parser and the small commands in ``main``, the ``train``
command in ``train``."""
