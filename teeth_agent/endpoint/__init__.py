"""The endpoint (control server) as a library: :mod:`.server` holds
the agents, :mod:`.control` is the operator's command channel."""
