"""Helpers for testing code that uses trio_realtime, in the spirit of :mod:`trio.testing`."""

from ._memory import (
    MemoryTransport as MemoryTransport,
    memory_transport_pair as memory_transport_pair,
)
from ._scripted import (
    RecordedFrame as RecordedFrame,
    ScriptedServer as ScriptedServer,
    open_scripted_server as open_scripted_server,
)
