"""The endpoint's errors: why an agent or a call was refused."""


class AgentNotConnected(Exception):
    """No agent with that id is connected."""


class EndpointConfigError(ValueError):
    """The endpoint's configuration cannot work (it refuses to start)."""


class HandshakeRefused(Exception):
    """A handshake the endpoint does not accept: the link gets a
    ``fatal_error`` with this text and is closed."""


class HandshakeRepeated(HandshakeRefused):
    """A second handshake on a connection that already made one."""


class TokenMismatch(HandshakeRefused):
    """The agent_id has a session token and the handshake did not present
    it (or presented another)."""


class CertificateMismatch(HandshakeRefused):
    """The client certificate names another agent_id than the handshake
    (or none at all)."""


class IdentityHeld(HandshakeRefused):
    """A live link holds the agent_id and this one did not prove it."""


class TooManyAgents(HandshakeRefused):
    """A new agent_id while the endpoint already knows ``max_agents``
    agents, all of them connected."""


class IdentityUnverifiable(HandshakeRefused):
    """The database that holds the session tokens of several endpoint
    processes cannot be read, so the identity cannot be checked."""
