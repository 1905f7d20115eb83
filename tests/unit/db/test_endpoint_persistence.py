"""The endpoint with a store (SQLite file): what is stored when, what is
loaded at start, the token file imported once."""

import json
import os
import shutil
import tempfile
import time
from unittest import mock

from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import identity
from teeth_agent.endpoint import persistence
from teeth_agent.endpoint import server as endpoint_mod
from tests import base
from tests.unit.endpoint import test_server_trust as trust

WAIT = 30.0


class TestEndpointWithStore(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.url = "sqlite:///" + os.path.join(self.directory,
                                               "endpoint.sqlite")

    def start_endpoint(self, flush_interval=0.05):
        store = store_mod.Store.from_url(self.url,
                                         flush_interval=flush_interval)
        endpoint = endpoint_mod.Endpoint(port=0, state_dir=self.directory,
                                         store=store).load_state()
        endpoint.persistence.start(endpoint)
        self.addCleanup(endpoint.persistence.stop)
        return endpoint

    def reader(self):
        reader = store_mod.Store.from_url(self.url)
        self.addCleanup(reader.engine.dispose)
        return reader

    def connect(self, endpoint, agent_id="a", token=None, **extra):
        connection = trust.FakeConnection()
        answer = endpoint._dispatch(connection, trust.Command(
            "handshake", trust.handshake(agent_id, token=token, **extra)))
        return connection, answer

    def status(self, endpoint, connection, **status):
        return endpoint._dispatch(connection,
                                  trust.Command("task_status", status))

    def test_final_state_is_in_the_database_when_answered(self):
        endpoint = self.start_endpoint()
        connection, _ = self.connect(endpoint, agent_version="3.1")
        self.status(endpoint, connection, task_id="t", state="running",
                    percent=10)
        self.assertEqual({}, self.status(
            endpoint, connection, task_id="t", state="complete",
            method="decom.disk_erase",
            result={"devices": [{"path": "/dev/sda", "outcome": "erased",
                                 "serial": "S1"}]}))
        # Read right after the answer, on another connection.
        reader = self.reader()
        [task] = reader.tasks()
        self.assertEqual("complete", task["state"])
        [record] = reader.erasures()
        self.assertEqual(("S1", "3.1"),
                         (record["serial"], record["agent_version"]))
        self.assertFalse(connection.closed)

    def test_a_failed_commit_closes_the_link_unanswered_and_resend_counts(
            self):
        endpoint = self.start_endpoint()
        connection, answer = self.connect(endpoint)
        store = endpoint.persistence.store
        store.flush(WAIT)
        with mock.patch.object(store, "_apply",
                               side_effect=RuntimeError("disk full")):
            with self.assertLogs(endpoint_mod.LOG, "ERROR"):
                self.status(endpoint, connection, task_id="t",
                            state="complete", result={"n": 1})
        self.assertTrue(connection.closed)
        self.assertEqual([], self.reader().tasks())
        # The agent sends it again on its next link: the book calls it a
        # duplicate, the database still gets it.
        endpoint._on_close(connection, "closed")
        again, _ = self.connect(endpoint,
                                token=answer.get("session_token"))
        self.status(endpoint, again, task_id="t", state="complete",
                    result={"n": 1})
        self.assertEqual(["complete"],
                         [t["state"] for t in self.reader().tasks()])
        self.assertFalse(again.closed)

    def test_restart_loads_agents_tasks_and_tokens(self):
        endpoint = self.start_endpoint()
        connection, answer = self.connect(endpoint, agent_version="1.0")
        token = answer["session_token"]
        self.status(endpoint, connection, task_id="t", state="complete",
                    result={"n": 1})
        endpoint._on_close(connection, "closed")
        endpoint.persistence.stop()

        restarted = self.start_endpoint()
        agent = restarted.agents["a"]
        self.assertFalse(agent.connected)
        self.assertEqual({"n": 1}, agent.tasks["t"]["result"])
        description = agent.describe()
        self.assertIsNone(description["process"])
        self.assertGreater(description["last_seen"], 0)
        self.assertEqual("1.0", description["agent_version"])
        # The identity survived: the old token proves it, none is issued.
        again, answer = self.connect(restarted, token=token)
        self.assertNotIn("session_token", answer)
        self.assertTrue(restarted.agents["a"].connected)
        # A re-sent final state is a duplicate, not a second row.
        self.status(restarted, again, task_id="t", state="complete",
                    result={"n": 1})
        restarted.persistence.store.flush(WAIT)
        self.assertEqual(1, len(self.reader().tasks()))
        # A newcomer without the token is refused.
        intruder, _ = self.connect(restarted, token="forged")
        self.assertTrue(intruder.closed)

    def test_a_forgotten_agents_row_goes_at_once_and_is_hidden_meanwhile(
            self):
        # An hour's flush_interval: only an urgent write is done before it.
        endpoint = self.start_endpoint(flush_interval=3600.0)
        connection, _ = self.connect(endpoint)
        connection.close()
        endpoint._on_close(connection, "closed")
        endpoint.persistence.store.flush(WAIT)
        self.assertEqual(["a"], [row["agent_id"]
                                 for row in self.reader().agents()])
        hidden = []
        real_put = endpoint.persistence.store.agent_forgotten

        def forgotten(agent_id):
            # Queued, not written yet: the fleet listing must skip it.
            hidden.append(agent_id in endpoint.persistence.forgetting)
            real_put(agent_id)
        with mock.patch.object(endpoint.persistence.store,
                               "agent_forgotten", forgotten):
            endpoint.forget("a")
        self.assertEqual([True], hidden)
        reader = self.reader()
        deadline = time.monotonic() + WAIT
        while (reader.agents() or endpoint.persistence.forgetting) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([], reader.agents())
        self.assertEqual(set(), endpoint.persistence.forgetting)

    def test_the_old_token_file_is_imported_once(self):
        hashes = {"old": identity.hash_token("secret-token")}
        path = os.path.join(self.directory, identity.TOKEN_FILE)
        with open(path, "w") as stream:
            json.dump({"version": 1, "tokens": hashes}, stream)
        endpoint = self.start_endpoint()
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(path + persistence.MIGRATED_SUFFIX))
        self.assertEqual(hashes, self.reader().token_hashes())
        self.assertTrue(endpoint.tokens.verify("old", "secret-token"))
        _, answer = self.connect(endpoint, agent_id="old",
                                 token="secret-token")
        self.assertNotIn("session_token", answer)

    def test_call_stores_the_sent_task_redacted(self):
        endpoint = self.start_endpoint()
        connection, _ = self.connect(endpoint)
        agent = endpoint.agents["a"]
        agent.connection = mock.Mock(closed=False)
        agent.connection.call.return_value = {"state": "running"}
        endpoint.call("a", "decom.firmware_secure", {
            "task_id": "f1",
            "firmware": [{"url": "https://h/f?sig=SECRET"}]})
        endpoint.persistence.store.flush(WAIT)
        [task] = self.reader().tasks()
        self.assertEqual(("f1", "sent"), (task["task_id"], task["state"]))
        self.assertNotIn("SECRET", json.dumps(task["params"]))
