"""teeth_agent.cmd.display: the progress bar and the agents table, plain
(what scripts and the functional tests read) and on a terminal (rich)."""

import io
import os
from unittest import mock

from teeth_agent.cmd import display
from tests import base
from tests.unit.cmd import samples


class TerminalTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        # rich takes the width of a terminal it cannot measure from here.
        patcher = mock.patch.dict(os.environ, {"COLUMNS": "160"})
        patcher.start()
        self.addCleanup(patcher.stop)


class FormatTest(base.TestCase):
    def test_eta(self):
        self.assertEqual("--:--", display.format_eta(None))
        self.assertEqual("00:00", display.format_eta(0.2))
        self.assertEqual("01:05", display.format_eta(65))
        self.assertEqual("59:59", display.format_eta(3599))
        self.assertEqual("1h05m", display.format_eta(3900))

    def test_progress_line(self):
        line = display.progress_line(samples.running(percent=50.0))
        self.assertEqual("t1 [###############...............]  50.0%  "
                         "ETA 01:05", line)
        self.assertEqual(("t1", "50.0", "01:05"),
                         samples.PROGRESS.match(line).groups())
        empty = display.progress_line({"task_id": "t2", "percent": None,
                                       "eta": None})
        self.assertEqual(("t2", "0.0", "--:--"),
                         samples.PROGRESS.match(empty).groups())

    def test_progress_line_escapes_the_task_id(self):
        line = display.progress_line(samples.running(task_id="t\x1b[2J\rx"))
        self.assertNotIn("\x1b", line)
        self.assertNotIn("\r", line)
        self.assertIn("\\u001b[2J", line)


class PlainProgressTest(base.TestCase):
    def test_one_line_per_running_update(self):
        stream = io.StringIO()
        progress = display.TaskProgress(stream, indent="   ")
        progress.update(samples.running(percent=10.0))
        progress.update({"task_id": "t1", "state": "complete",
                         "percent": 100.0})
        progress.update(samples.running(percent=20.0, eta=None))
        progress.finish()
        progress.finish()
        lines = stream.getvalue().splitlines()
        self.assertEqual(2, len(lines), lines)
        self.assertTrue(all(line.startswith("   t1 [") for line in lines))
        self.assertEqual([("t1", "10.0", "01:05"), ("t1", "20.0", "--:--")],
                         [samples.PROGRESS.match(line.strip()).groups()
                          for line in lines])

    def test_note_is_a_line_of_its_own(self):
        stream = io.StringIO()
        progress = display.TaskProgress(stream, indent="   ")
        progress.update(samples.running(percent=10.0))
        progress.note("   <- answer")
        progress.update(samples.running(percent=20.0))
        lines = stream.getvalue().splitlines()
        self.assertEqual("   <- answer", lines[1])
        self.assertEqual(3, len(lines))


class TerminalProgressTest(TerminalTestCase):
    def test_note_goes_above_the_live_bar(self):
        stream = samples.Terminal()
        progress = display.TaskProgress(stream)
        progress.update(samples.running(percent=10.0))
        progress.note("<- [bold]answer")
        progress.update(samples.running(percent=20.0))
        progress.finish()
        output = stream.getvalue()
        self.assertIn("<- [bold]answer\n", output)
        self.assertGreater(output.rindex("20.0%"), output.index("answer"))

    def test_bar_shows_percent_and_the_agents_eta(self):
        stream = samples.Terminal()
        progress = display.TaskProgress(stream)
        progress.update(samples.running(percent=42.0, eta=65))
        progress.update(samples.running(percent=43.5, eta=61))
        progress.finish()
        output = stream.getvalue()
        self.assertIn("t1", output)
        self.assertIn("43.5%", output)
        self.assertIn("ETA 01:01", output)
        self.assertNotIn("#", output)  # drawn by rich, not the plain bar
        self.assertNotIn(" 0.0%", output)
        # The bar ends with its line, and the cursor is shown again.
        self.assertTrue(output.endswith("\n\x1b[?25h"), repr(output[-20:]))

    def test_agent_text_is_neither_markup_nor_escapes(self):
        stream = samples.Terminal()
        progress = display.TaskProgress(stream)
        progress.update(samples.running(task_id="[bold]x[/bold]\x1b[2J"))
        progress.finish()
        output = stream.getvalue()
        self.assertIn("[bold]x[/bold]\\u001b[2J", output)
        self.assertNotIn("\x1b[2J", output)

    def test_finish_twice_and_a_new_bar_after(self):
        stream = samples.Terminal()
        progress = display.TaskProgress(stream)
        progress.update(samples.running(task_id="first"))
        progress.finish()
        progress.finish()
        progress.update(samples.running(task_id="second"))
        progress.finish()
        output = stream.getvalue()
        self.assertIn("first", output)
        self.assertIn("second", output)


class PlainAgentTableTest(base.TestCase):
    def test_rows_keep_their_form(self):
        stream = io.StringIO()
        table = display.AgentTable(stream)
        table.add(samples.agent("a-1", tasks=("running", "complete")))
        table.add(samples.agent("a-2", tls=False))
        table.add(samples.agent("a-3", connected=False, peer=None))
        table.close()
        self.assertEqual(
            ["AGENT                                    STATE      LINK      "
             "PEER                     TASKS",
             "a-1                                      connected  tls       "
             "10.0.0.1:5               2 (1 running)",
             "a-2                                      connected  PLAINTEXT "
             "10.0.0.1:5               0 (0 running)",
             "a-3                                      gone       -         "
             "-                        0 (0 running)"],
            stream.getvalue().splitlines())
        self.assertEqual(3, table.count)

    def test_a_disconnected_agent_shows_when_it_was_last_seen(self):
        stream = io.StringIO()
        table = display.AgentTable(stream)
        gone = samples.agent("a-4", connected=False, peer=None)
        gone["last_seen"] = 1796169600.0
        forged = samples.agent("a-5", connected=False, peer=None)
        forged["last_seen"] = float("nan")
        table.add(gone)
        table.add(forged)
        table.close()
        lines = stream.getvalue().splitlines()
        self.assertIn("seen 2026-12-02T00:00:00Z", lines[1])
        self.assertEqual("-", lines[2].split()[3])

    def test_no_agents(self):
        stream = io.StringIO()
        display.AgentTable(stream).close()
        self.assertEqual("no agents\n", stream.getvalue())

    def test_agent_text_is_escaped(self):
        stream = io.StringIO()
        table = display.AgentTable(stream)
        table.add(samples.agent("esc-\x1b[2J-agent",
                                peer="agent at \n forged"))
        table.close()
        output = stream.getvalue()
        self.assertNotIn("\x1b", output)
        self.assertEqual(2, len(output.splitlines()))
        self.assertIn('"esc-\\u001b[2J-agent"', output)


class TerminalAgentTableTest(TerminalTestCase):
    def test_table_with_one_header_across_chunks(self):
        stream = samples.Terminal()
        table = display.AgentTable(stream, chunk=2)
        for number in range(5):
            table.add(samples.agent("agent-%d" % number, tls=number != 3))
        table.close()
        output = stream.getvalue()
        for number in range(5):
            self.assertIn("agent-%d" % number, output)
        self.assertEqual(1, output.count("AGENT"))
        self.assertEqual(1, output.count("PLAINTEXT"))
        self.assertNotIn("no agents", output)

    def test_rows_are_drawn_as_they_fill_a_chunk(self):
        stream = samples.Terminal()
        table = display.AgentTable(stream, chunk=2)
        table.add(samples.agent("agent-0"))
        self.assertEqual("", stream.getvalue())
        table.add(samples.agent("agent-1"))
        self.assertIn("agent-1", stream.getvalue())
        table.add(samples.agent("agent-2"))
        table.flush()
        self.assertIn("agent-2", stream.getvalue())

    def test_agent_text_is_neither_markup_nor_escapes(self):
        stream = samples.Terminal()
        table = display.AgentTable(stream)
        table.add(samples.agent("[red]x[/red]\x1b]0;title\x07",
                                peer="agent at [link=http://e]y[/link]",
                                tasks=("running",)))
        table.close()
        output = stream.getvalue()
        self.assertIn("[red]x[/red]", output)
        self.assertIn("\\u001b]0;title\\u0007", output)
        self.assertIn("[link=http://e]y[/link]", output)
        self.assertNotIn("\x1b]0;", output)
        self.assertNotIn("\x07", output)
        self.assertIn("1 (1 running)", output)

    def test_narrow_terminal_keeps_every_column(self):
        os.environ["COLUMNS"] = "60"
        stream = samples.Terminal()
        table = display.AgentTable(stream)
        table.add(samples.agent("a-very-long-agent-id-" + "x" * 40,
                                tasks=("running",)))
        table.close()
        output = stream.getvalue()
        for column in display.AGENT_HEADER:
            self.assertIn(column, output)
        self.assertIn("1 (1 running)", output)
        self.assertIn("x" * 10, output)

    def test_no_agents(self):
        stream = samples.Terminal()
        display.AgentTable(stream).close()
        self.assertEqual("no agents\n", stream.getvalue())


class RogueNumbersTest(base.TestCase):
    """percent and eta come from the agent: a rogue one must not crash the
    operator's CLI with strings, NaN, infinities or booleans."""

    def test_progress_line_survives_any_percent_and_eta(self):
        for percent, eta in (("nan", "x"), (float("nan"), float("inf")),
                             (True, -5), (None, None), ({}, []),
                             (1e308, 1e308), (-20, float("-inf"))):
            line = display.progress_line({"task_id": "t", "percent": percent,
                                          "eta": eta})
            self.assertIn("ETA", line)

    def test_percent_is_clamped(self):
        self.assertIn("100.0%", display.progress_line(
            {"task_id": "t", "percent": 250, "eta": 1}))
        self.assertIn("  0.0%", display.progress_line(
            {"task_id": "t", "percent": -3, "eta": 1}))
