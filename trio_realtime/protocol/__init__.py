"""The sans-IO core of trio_realtime: usable from Trio, asyncio or plain synchronous code.

Nothing in this package performs I/O, reads a clock or draws random numbers: callers pass
frames in, get frames and events out, and pass ``now`` and an RNG where time and chance
matter. ``tests/protocol/test_no_io.py`` enforces it.
"""

from .._errors import (
    LocalProtocolError as LocalProtocolError,
    RemoteProtocolError as RemoteProtocolError,
)
from .._util import fix_module_names as fix_module_names
from ._backoff import BackoffPolicy as BackoffPolicy, RandomSource as RandomSource
from ._channel_state import ChannelState as ChannelState, transition as transition
from ._connection import ChannelCore as ChannelCore, ClientConnection as ClientConnection
from ._events import (
    Authenticated as Authenticated,
    Broadcast as Broadcast,
    ChannelClosed as ChannelClosed,
    ChannelErrored as ChannelErrored,
    ConnectionEvent as ConnectionEvent,
    Dropped as Dropped,
    HeartbeatAcked as HeartbeatAcked,
    PostgresChange as PostgresChange,
    PresenceJoin as PresenceJoin,
    PresenceLeave as PresenceLeave,
    PresenceSync as PresenceSync,
    RealtimeEvent as RealtimeEvent,
    Rejoined as Rejoined,
    Reply as Reply,
    ServerEvent as ServerEvent,
    SystemMessage as SystemMessage,
)
from ._filters import (
    FILTER_OPERATORS as FILTER_OPERATORS,
    MAX_IN_VALUES as MAX_IN_VALUES,
    Condition as Condition,
    Filter as Filter,
    FilterError as FilterError,
    check_columns as check_columns,
    evaluate_filter as evaluate_filter,
    parse_filter as parse_filter,
    validate_filter as validate_filter,
)
from ._heartbeat import HeartbeatTimer as HeartbeatTimer
from ._join import (
    BroadcastConfig as BroadcastConfig,
    ChannelConfig as ChannelConfig,
    PostgresChanges as PostgresChanges,
    PresenceConfig as PresenceConfig,
    ReplayConfig as ReplayConfig,
    topic_for as topic_for,
)
from ._messages import (
    SUPPORTED_VSNS as SUPPORTED_VSNS,
    Message as Message,
    Serializer as Serializer,
    V1Serializer as V1Serializer,
    V2Serializer as V2Serializer,
    decode_binary as decode_binary,
    serializer_for as serializer_for,
)
from ._presence import (
    PresenceTracker as PresenceTracker,
    sync_diff as sync_diff,
    sync_state as sync_state,
    transform as transform,
)
from ._seed002 import (
    SEED002_VSN as SEED002_VSN,
    Seed002Serializer as Seed002Serializer,
    seed002_subprotocols as seed002_subprotocols,
    seed002_url as seed002_url,
)

fix_module_names(globals(), __name__)
del fix_module_names
