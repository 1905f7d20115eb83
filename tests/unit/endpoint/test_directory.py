"""Two endpoint processes on one SQLite file, as the directory sees them.

Each "process" is a :class:`Store` of its own on the same file (what two
``serve`` processes hold), with a :class:`ProcessDirectory` over it and a
clock the test moves.
"""

import os
import shutil
import tempfile

import sqlalchemy as sa

from teeth_agent.db import models
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import directory as directory_mod
from teeth_agent.endpoint import errors
from teeth_agent.endpoint import identity
from teeth_agent.endpoint import persistence
from tests import base


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class TwoProcessesTest(base.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Migrated once; each test gets a copy (the migrations are slow).
        cls.template_dir = tempfile.mkdtemp(prefix="teeth-directory-")
        cls.addClassCleanup(shutil.rmtree, cls.template_dir, True)
        cls.template = os.path.join(cls.template_dir, "template.sqlite")
        engine = schema.make_engine("sqlite:///" + cls.template)
        schema.upgrade(engine)
        engine.dispose()

    def setUp(self):
        super().setUp()
        tempdir = tempfile.mkdtemp(prefix="teeth-directory-")
        self.addCleanup(shutil.rmtree, tempdir, True)
        path = os.path.join(tempdir, "endpoint.sqlite")
        shutil.copy(self.template, path)
        self.url = "sqlite:///" + path
        self.clock = Clock()
        self.a, self.dir_a = self.process("unix:/run/a.sock")
        self.b, self.dir_b = self.process("unix:/run/b.sock")

    def process(self, address):
        store = store_mod.Store.from_url(
            self.url, clock=self.clock, flush_interval=0.01).open()
        self.addCleanup(store.close)
        directory = directory_mod.ProcessDirectory(store, address,
                                                   stale_after=30.0,
                                                   clock=self.clock)
        directory.register()
        return store, directory

    def connect(self, store, agent_id="agent-1"):
        store.agent_connected(agent_id, {"agent_id": agent_id})
        store.flush(10)

    def test_the_holder_is_the_process_the_agent_is_connected_to(self):
        self.assertIsNone(self.dir_a.holder("agent-1"))
        self.assertFalse(self.dir_a.known("agent-1"))
        self.connect(self.b)
        holder = self.dir_a.holder("agent-1")
        self.assertEqual(self.b.process_id, holder.process_id)
        self.assertEqual("unix:/run/b.sock", holder.address)
        self.assertTrue(self.dir_a.known("agent-1"))

    def test_a_late_disconnect_never_undoes_the_new_holder(self):
        self.connect(self.b)
        self.connect(self.a)
        self.b.agent_disconnected("agent-1")
        self.b.flush(10)
        self.assertEqual(self.a.process_id,
                         self.dir_b.holder("agent-1").process_id)
        self.a.agent_disconnected("agent-1")
        self.a.flush(10)
        self.assertIsNone(self.dir_b.holder("agent-1"))

    def test_a_silent_process_is_expired_with_its_agents(self):
        self.connect(self.b)
        self.clock.now += 31.0
        self.assertIsNone(self.dir_a.holder("agent-1"))
        # A beats (its directory writes the beat), B does not.
        expired = self.dir_a.heartbeat()
        self.assertEqual([self.b.process_id],
                         [peer.process_id for peer in expired])
        self.assertEqual([], self.dir_a.heartbeat())
        with self.a.engine.connect() as connection:
            row = connection.execute(sa.select(
                models.Agent.connected, models.Agent.process_id).where(
                    models.Agent.agent_id == "agent-1")).one()
        self.assertEqual((False, None), tuple(row))
        self.assertEqual([self.a.process_id],
                         [peer.process_id for peer in self.dir_a.live()])

    def test_a_process_counted_dead_by_mistake_claims_its_agents_again(
            self):
        self.connect(self.b)
        self.clock.now += 31.0
        self.assertEqual([self.b.process_id],
                         [p.process_id for p in self.dir_a.heartbeat()])
        self.assertFalse(self.dir_a.revived)
        self.assertIsNone(self.dir_a.holder("agent-1"))
        # B was only slow: its next beat sees it and claims its agent.
        self.assertEqual([], self.dir_b.heartbeat(held=["agent-1"]))
        self.assertTrue(self.dir_b.revived)
        self.assertEqual(self.b.process_id,
                         self.dir_a.holder("agent-1").process_id)
        self.dir_b.heartbeat(held=["agent-1"])
        self.assertFalse(self.dir_b.revived)

    def test_a_final_state_recorded_by_one_is_seen_by_the_other(self):
        self.connect(self.b)
        self.b.task_status("agent-1", {"task_id": "t1", "state": "running",
                                       "percent": 5.0})
        self.b.flush(10)
        self.assertIsNone(self.dir_a.task_final("agent-1", "t1"))
        self.b.task_status("agent-1", {"task_id": "t1", "state": "complete",
                                       "result": {"ok": 1}})
        self.b.flush(10)
        final = self.dir_a.task_final("agent-1", "t1")
        self.assertEqual("complete", final["state"])
        self.assertEqual({"ok": 1}, final["result"])

    def test_a_process_of_this_host_whose_pid_is_gone_is_reaped_at_once(
            self):
        self.connect(self.b)
        # B's pid on this host is gone (above the kernel's PID_MAX_LIMIT:
        # no process ever has it); its heartbeat is still fresh.
        with self.a.engine.begin() as connection:
            connection.execute(sa.update(models.EndpointProcess).where(
                models.EndpointProcess.id == self.b.process_id).values(
                    pid=2 ** 22 + 7))
        self.assertEqual(self.b.process_id,
                         self.dir_a.holder("agent-1").process_id)
        reaped = self.dir_a.register()
        self.assertEqual([self.b.process_id],
                         [peer.process_id for peer in reaped])
        self.assertIsNone(self.dir_a.holder("agent-1"))
        row = self.dir_a.agent_rows(["agent-1"], 5)["agent-1"]
        self.assertEqual((False, None), (row["connected"], row["process"]))
        self.assertEqual([self.a.process_id],
                         [peer.process_id for peer in self.dir_a.live()])

    def test_a_live_pid_or_another_hosts_process_is_not_reaped(self):
        self.connect(self.b)
        with self.a.engine.begin() as connection:
            connection.execute(sa.update(models.EndpointProcess).where(
                models.EndpointProcess.id == self.b.process_id).values(
                    host="elsewhere", pid=2 ** 22 + 7))
        # (This test process's own pid is B's in the other tests: alive.)
        self.assertEqual([], self.dir_a.heartbeat())
        self.assertEqual([], self.dir_a.register())
        self.assertEqual(self.b.process_id,
                         self.dir_a.holder("agent-1").process_id)

    def test_the_fleet_listing_names_each_agents_holder(self):
        self.assertEqual([], self.dir_a.agent_ids())
        self.assertEqual({}, self.dir_a.agent_rows([], 5))
        self.b.agent_connected("agent-2", {
            "agent_id": "agent-2", "agent_version": "1.2",
            "hardware": {"cpus": 4}, "extensions": ["decom"]},
            peer="agent at 10.0.0.2:4000", tls=True)
        self.b.flush(10)
        self.connect(self.a, "agent-1")
        self.connect(self.b, "agent-3")
        self.b.agent_disconnected("agent-3")
        self.b.flush(10)
        self.assertEqual(["agent-1", "agent-2", "agent-3"],
                         self.dir_a.agent_ids())
        self.clock.now += 5.0
        self.dir_b.heartbeat()
        rows = self.dir_a.agent_rows(["agent-2", "agent-3", "nobody"], 5)
        self.assertEqual({"agent-2", "agent-3"}, set(rows))
        held = directory_mod.describe_stored(rows["agent-2"])
        name_b = rows["agent-2"]["process"]
        self.assertTrue(name_b)
        self.assertEqual({
            "agent_id": "agent-2", "connected": True,
            "peer": "agent at 10.0.0.2:4000", "tls": True,
            "identity": None, "connected_at": None, "first_seen": 1000.0,
            # The holder beat since: it held the link then.
            "last_seen": 1005.0, "process": name_b, "agent_version": "1.2",
            "hardware": {"cpus": 4}, "extensions": ["decom"], "tasks": [],
            "log_records": None, "violations": [], "source": "database"},
            held)
        gone = directory_mod.describe_stored(rows["agent-3"])
        self.assertEqual((False, None, None, False, 1000.0), (
            gone["connected"], gone["process"], gone["peer"], gone["tls"],
            gone["last_seen"]))

    def test_an_agent_of_a_dead_process_is_listed_as_held_by_nobody(self):
        self.connect(self.b, "agent-1")
        self.clock.now += 31.0
        # Not expired yet by anyone: the join itself wants a live holder.
        row = self.dir_a.agent_rows(["agent-1"], 5)["agent-1"]
        self.assertEqual((False, None), (row["connected"], row["process"]))

    def test_the_fleet_listing_carries_the_newest_tasks_only(self):
        self.connect(self.b)
        for number in range(4):
            self.b.task_status("agent-1", {
                "task_id": "t%d" % number, "state": "complete",
                "method": "decom.qc", "result": {"n": number}})
        self.b.task_status("agent-1", {"task_id": "t9", "state": "running",
                                       "method": "decom.disk_erase",
                                       "percent": 40.0})
        self.b.flush(10)
        row = self.dir_a.agent_rows(["agent-1"], 3)["agent-1"]
        self.assertEqual(["t2", "t3", "t9"],
                         [task["task_id"] for task in row["tasks"]])
        full = directory_mod.describe_stored(row)["tasks"]
        self.assertEqual({"n": 3}, full[1]["result"])
        self.assertEqual({"task_id": "t9", "state": "running",
                          "method": "decom.disk_erase", "percent": 40.0,
                          "eta": None}, full[2])
        summaries = directory_mod.describe_stored(row, full=False)["tasks"]
        self.assertNotIn("result", summaries[1])
        self.assertEqual("t2", summaries[0]["task_id"])

    def test_a_token_issued_by_one_process_binds_the_other(self):
        tokens_b = persistence.DbTokenStore(self.b, {})
        token = tokens_b.issue("agent-1")
        self.b.flush(10)
        # A loaded its tokens before B issued this one.
        tokens_a = persistence.DbTokenStore(self.a, {})
        self.assertIn("agent-1", tokens_a)
        self.assertFalse(tokens_a.verify("agent-1", "forged"))
        self.assertTrue(tokens_a.verify("agent-1", token))
        # Issued again by B after a forget there: A follows.
        tokens_b.forget("agent-1")
        again = tokens_b.issue("agent-1")
        self.b.flush(10)
        self.assertTrue(tokens_a.verify("agent-1", again))
        self.assertFalse(tokens_a.verify("agent-1", token))


class UnreadableDatabaseTest(base.TestCase):
    def test_an_identity_that_cannot_be_checked_is_refused(self):
        class Broken:
            def token_hash(self, agent_id):
                raise schema.DatabaseError("cannot read the database x: "
                                           "gone")

        tokens = persistence.DbTokenStore(Broken(), {})
        with self.assertRaises(errors.IdentityUnverifiable) as caught:
            "agent-1" in tokens
        self.assertIsInstance(caught.exception, errors.HandshakeRefused)
        self.assertIn("agent_id agent-1", str(caught.exception))

    def test_a_known_token_is_checked_without_the_database(self):
        class Unused:
            def token_hash(self, agent_id):
                raise AssertionError("the database was read")

        tokens = persistence.DbTokenStore(Unused(), {
            "agent-1": identity.hash_token("secret")})
        self.assertIn("agent-1", tokens)
        self.assertTrue(tokens.verify("agent-1", "secret"))
