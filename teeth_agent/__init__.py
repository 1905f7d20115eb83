"""teeth-agent: the agent and the endpoint (see docs/architecture.md)."""
