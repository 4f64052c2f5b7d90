"""The reference Supabase Realtime server: ``serve_realtime(host, port)``.

A small, dependency-light server that behaves like the official one on the wire (vsn 1.0.0
and 2.0.0), for tests, local development and interop checks. See :func:`serve_realtime`.
"""

from ._config import ServerConfig as ServerConfig
from ._serve import (
    RealtimeServer as RealtimeServer,
    ServerStatistics as ServerStatistics,
    serve_realtime as serve_realtime,
)

for _obj in (ServerConfig, RealtimeServer, ServerStatistics, serve_realtime):
    _obj.__module__ = __name__
del _obj
