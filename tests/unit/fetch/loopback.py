"""A guard for unit tests that download from a local server."""

from teeth_agent.fetch import http_source


class OnlyLoopback:
    """Replaces socket.create_connection: records every address and
    refuses anything but 127.0.0.1 (no test may reach another one)."""

    def __init__(self):
        self.calls = []
        self._real = http_source.socket.create_connection

    def __call__(self, address, *args, **kwargs):
        self.calls.append(address[0])
        if address[0] != "127.0.0.1":
            raise AssertionError("connected to %s" % (address,))
        return self._real(address, *args, **kwargs)
