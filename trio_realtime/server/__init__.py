"""The reference Supabase Realtime server: ``serve_realtime(host, port)``.

A small, dependency-light server that behaves like the official one on the wire (vsn 1.0.0
and 2.0.0), for tests, local development and interop checks. See :func:`serve_realtime`.
postgres_changes come from a real PostgreSQL (``database_url``); :func:`open_embedded_postgres`
starts a throwaway one with the machine's PostgreSQL binaries. Private channels are
authorized by a pluggable policy (:class:`AuthorizationRequest`, :func:`default_authorize`),
and their broadcasts are stored for replay.
"""

from .._embedded_postgres import (
    EmbeddedPostgres as EmbeddedPostgres,
    EmbeddedPostgresError as EmbeddedPostgresError,
    open_embedded_postgres as open_embedded_postgres,
)
from ._authorization import (
    AuthorizationRequest as AuthorizationRequest,
    default_authorize as default_authorize,
)
from ._config import ServerConfig as ServerConfig
from ._postgres import DatabaseUnavailable as DatabaseUnavailable
from ._serve import (
    RealtimeServer as RealtimeServer,
    ServerStatistics as ServerStatistics,
    serve_realtime as serve_realtime,
)

for _obj in (
    ServerConfig, RealtimeServer, ServerStatistics, serve_realtime, DatabaseUnavailable,
    EmbeddedPostgres, EmbeddedPostgresError, open_embedded_postgres, AuthorizationRequest,
    default_authorize,
):
    _obj.__module__ = __name__
del _obj
