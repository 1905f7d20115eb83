"""conf is a leaf: its copies of protocol's and the erase catalogue's
constants must equal the originals."""

from teeth_agent.conf import decom as conf_decom
from teeth_agent.conf import defaults
from teeth_agent.hardware import erase
from teeth_agent import protocol
from tests import base


class TestConfDefaults(base.TestCase):

    def test_max_line_length_is_protocols(self):
        self.assertEqual(protocol.DEFAULT_MAX_LINE_LENGTH,
                         defaults.DEFAULT_MAX_LINE_LENGTH)

    def test_erase_methods_are_the_catalogues(self):
        self.assertEqual(tuple(erase.KNOWN_METHODS),
                         defaults.ERASE_METHODS)

    def test_default_erase_order_is_the_catalogues(self):
        self.assertEqual(tuple(erase.DEFAULT_METHOD_ORDER),
                         defaults.DEFAULT_ERASE_ORDER)

    def test_the_option_uses_them(self):
        opt = {o.name: o for o in conf_decom.opts}['erase_methods']
        self.assertEqual(list(defaults.DEFAULT_ERASE_ORDER), opt.default)
