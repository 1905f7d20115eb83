"""The eventlet transport: the only package that imports eventlet.

The agent and the endpoint use it through the names here:
:mod:`.hub` (green threads and the bridge to OS threads),
:mod:`.sockets` (TLS contexts, listening, connecting and the accept
loop) and :mod:`.connection` (a :class:`~.connection.Connection` runs one
:class:`teeth_agent.protocol.Session` over a socket).
"""

from teeth_agent.transport import connection
from teeth_agent.transport import hub
from teeth_agent.transport import sockets

# Re-exported so that callers keep using ``transport.<name>``.
CallTimeout = connection.CallTimeout
Connection = connection.Connection
ConnectionLost = connection.ConnectionLost
MessageStats = connection.MessageStats
RemoteError = connection.RemoteError
Event = hub.Event
LightQueue = hub.LightQueue
monotonic = hub.monotonic
Queue = hub.Queue
QueueEmpty = hub.QueueEmpty
run_in_thread = hub.run_in_thread
sleep = hub.sleep
spawn = hub.spawn
spawn_after = hub.spawn_after
ThreadBridge = hub.ThreadBridge
Timeout = hub.Timeout
accept_loop = sockets.accept_loop
client_tls_context = sockets.client_tls_context
connect = sockets.connect
connect_unix = sockets.connect_unix
error_text = sockets.error_text
listen = sockets.listen
listen_unix = sockets.listen_unix
peer_uid = sockets.peer_uid
secure_accepted = sockets.secure_accepted
server_tls_context = sockets.server_tls_context
socketpair = sockets.socketpair
TLS_VERSIONS = sockets.TLS_VERSIONS
TLSContextError = sockets.TLSContextError
