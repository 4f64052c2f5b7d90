"""Helpers for testing code that uses trio_realtime, in the spirit of :mod:`trio.testing`."""

from .._util import fix_module_names as fix_module_names
from ._memory import (
    MemoryTransport as MemoryTransport,
    memory_transport_pair as memory_transport_pair,
)
from ._proxy import (
    FaultProxy as FaultProxy,
    FaultProxyStatistics as FaultProxyStatistics,
    open_fault_proxy as open_fault_proxy,
)
from ._scripted import (
    RecordedFrame as RecordedFrame,
    ScriptedServer as ScriptedServer,
    open_scripted_server as open_scripted_server,
)

fix_module_names(globals(), __name__)
del fix_module_names
