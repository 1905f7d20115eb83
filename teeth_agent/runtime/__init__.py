"""The agent runtime: the connection loop to an endpoint, log
forwarding and the session tokens the agent keeps."""
