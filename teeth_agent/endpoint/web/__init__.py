"""The endpoint's read-only web dashboard and its Prometheus metrics.

:class:`~.http.DashboardServer` serves, on one listener in an OS thread of
its own, the page and its static files (package data, no CDN), a JSON
snapshot of what the endpoint knows, a Server-Sent Events stream of its
changes, the erasure report (JSON and CSV) and ``/metrics``. Every read of
the endpoint's books runs on the hub through a
:class:`teeth_agent.transport.ThreadBridge`; the HTTP thread never touches
them itself.
"""
