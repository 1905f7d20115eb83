"""The sample configs in etc/teeth-agent are generated, and must be current.

When this fails, run ``tox -e genconfig`` and commit the result.
"""

import os
import tempfile

from oslo_config import generator

from tests import base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))


class SampleConfigTest(base.TestCase):
    def check(self, generator_conf, sample):
        with tempfile.TemporaryDirectory() as tmp:
            output = os.path.join(tmp, "sample")
            generator.main(["--config-file",
                            os.path.join(ROOT, "etc/teeth-agent",
                                         generator_conf),
                            "--output-file", output])
            with open(output) as stream:
                fresh = stream.read()
        with open(os.path.join(ROOT, "etc/teeth-agent", sample)) as stream:
            committed = stream.read()
        self.assertEqual(fresh, committed,
                         "etc/teeth-agent/%s is stale: run tox -e genconfig"
                         % sample)

    def test_agent_sample_is_current(self):
        self.check("teeth-agent-config-generator.conf",
                   "teeth-agent.conf.sample")

    def test_endpoint_sample_is_current(self):
        self.check("teeth-endpoint-config-generator.conf",
                   "teeth-endpoint.conf.sample")
