"""The interop tier: official clients against our reference server.

The server fixtures (``start_server``, ``server``) come from ``tests/conftest.py``. The
official clients run as subprocesses driven through ``_peers.open_peer``; the tests in this
directory are marked ``interop`` and are never skipped: a missing Node, npm package or PyPI
``realtime`` package fails them with a message to run ``scripts/bootstrap``.
"""
