"""[dashboard] and [metrics] listen values."""

from oslo_config import cfg

from teeth_agent.conf import dashboard
from teeth_agent.conf import metrics
from tests import base


class TestSplitListen(base.TestCase):
    def test_good_values(self):
        self.assertEqual(("127.0.0.1", 8780),
                         dashboard.split_listen("127.0.0.1:8780"))
        self.assertEqual(("::1", 0), dashboard.split_listen("[::1]:0"))
        self.assertEqual(("dash.example", 443),
                         dashboard.split_listen(" dash.example:443 "))

    def test_bad_values_say_what_is_wrong_in_one_sentence(self):
        cases = {"8780": "is not host:port",
                 ":8780": "is not host:port",
                 "::1:8780": "in brackets",
                 "[nope]:1": "no valid IPv6 address",
                 "127.0.0.1:http": "no port number",
                 "127.0.0.1:70000": "no port number",
                 "bad host!:80": "no valid host name"}
        for value, problem in cases.items():
            with self.assertRaises(ValueError) as caught:
                dashboard.split_listen(value)
            self.assertIn(problem, str(caught.exception), value)
            self.assertNotIn("\n", str(caught.exception))

    def test_loopback(self):
        for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
            self.assertTrue(dashboard.is_loopback(host), host)
        for host in ("0.0.0.0", "::", "10.0.0.1", "dash.example"):
            self.assertFalse(dashboard.is_loopback(host), host)


class TestOptions(base.TestCase):
    def test_a_bad_listen_value_is_refused_by_the_option(self):
        conf = cfg.ConfigOpts()
        dashboard.register_opts(conf)
        conf([])
        with self.assertRaises(ValueError):
            conf.set_override("listen", "nope", group="dashboard")
            conf.dashboard.listen

    def test_agent_metrics_are_off_by_default(self):
        conf = cfg.ConfigOpts()
        metrics.register_opts(conf)
        conf([])
        self.assertEqual("", conf.metrics.listen)
        conf.set_override("listen", "0.0.0.0:9108", group="metrics")
        self.assertEqual("0.0.0.0:9108", conf.metrics.listen)
