"""trio_realtime: a Trio-native client for Supabase Realtime, with a reference server.

Broadcast, presence and postgres_changes over one WebSocket, with structured lifetimes: a
client is an ``async with open_realtime(...)`` block, a subscription is an
``async with client.channel(...)`` block, and nothing outlives its block.
"""

from ._active import (
    ActiveRouter as ActiveRouter,
    ActiveRouterStatistics as ActiveRouterStatistics,
    ActiveView as ActiveView,
    BackgroundEvent as BackgroundEvent,
    GroupOf as GroupOf,
    InboxStatistics as InboxStatistics,
    SqliteInbox as SqliteInbox,
    StoredEvent as StoredEvent,
    group_by_field as group_by_field,
    open_active_router as open_active_router,
    open_sqlite_inbox as open_sqlite_inbox,
)
from ._blocking import (
    BlockingRealtimeClient as BlockingRealtimeClient,
    BlockingSubscription as BlockingSubscription,
    open_blocking_realtime as open_blocking_realtime,
)
from ._client import (
    ClientStatistics as ClientStatistics,
    RealtimeClient as RealtimeClient,
    TokenSource as TokenSource,
    open_realtime as open_realtime,
)
from ._config import OverflowPolicy as OverflowPolicy, RealtimeConfig as RealtimeConfig
from ._connection_state import ConnectionState as ConnectionState
from ._debounce import (
    BroadcastTarget as BroadcastTarget,
    DebouncedSender as DebouncedSender,
    DebouncedSenderStatistics as DebouncedSenderStatistics,
    open_debounced_sender as open_debounced_sender,
)
from ._entities import (
    ChannelKind as ChannelKind,
    EntityChannel as EntityChannel,
    EntityChannelInfo as EntityChannelInfo,
    EntityChannels as EntityChannels,
    EntityChannelsStatistics as EntityChannelsStatistics,
    entity_channel_name as entity_channel_name,
    open_entity_channels as open_entity_channels,
)
from ._errors import (
    ConnectionLost as ConnectionLost,
    HandshakeFailed as HandshakeFailed,
    InternalError as InternalError,
    JoinError as JoinError,
    JoinRejected as JoinRejected,
    JoinTimedOut as JoinTimedOut,
    LocalProtocolError as LocalProtocolError,
    ProtocolError as ProtocolError,
    PushError as PushError,
    PushRejected as PushRejected,
    PushTimedOut as PushTimedOut,
    RealtimeError as RealtimeError,
    RemoteProtocolError as RemoteProtocolError,
    SubscriptionClosed as SubscriptionClosed,
    TransportError as TransportError,
)
from ._subscription import Subscription as Subscription, SubscriptionStatistics as SubscriptionStatistics
from ._util import fix_module_names as fix_module_names
from ._version import __version__ as __version__
from .protocol import (
    BackoffPolicy as BackoffPolicy,
    Broadcast as Broadcast,
    BroadcastConfig as BroadcastConfig,
    ChannelErrored as ChannelErrored,
    ChannelState as ChannelState,
    Dropped as Dropped,
    Filter as Filter,
    PostgresChange as PostgresChange,
    PostgresChanges as PostgresChanges,
    PresenceConfig as PresenceConfig,
    PresenceJoin as PresenceJoin,
    PresenceLeave as PresenceLeave,
    PresenceSync as PresenceSync,
    RealtimeEvent as RealtimeEvent,
    Rejoined as Rejoined,
    ReplayConfig as ReplayConfig,
    ServerEvent as ServerEvent,
    SystemMessage as SystemMessage,
)

fix_module_names(globals(), __name__)
del fix_module_names
