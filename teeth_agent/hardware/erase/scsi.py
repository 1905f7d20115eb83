"""SCSI erase: SANITIZE through sg3-utils and the parsers of its output."""

import re
import time

from teeth_agent.hardware.erase import catalogue
from teeth_agent.hardware.erase import polling
from teeth_agent import processes


_SCSI_SANITIZE = {"scsi_sanitize_overwrite": (1, ["--overwrite", "--zero"]),
                  "scsi_sanitize_block": (2, ["--block"]),
                  "scsi_sanitize_crypto": (3, ["--crypto"])}


def parse_sg_opcodes(text):
    """True when ``sg_opcodes -o OP,SA`` says the command is supported."""
    match = re.search(r"Command is (.+)", text)
    return bool(match) and match.group(1).strip().startswith("supported")


def _probe_scsi(device):
    path = device["path"]
    supported, reasons = set(), {}
    for method in catalogue.METHODS.values():
        if method.family == "ata":
            reasons[method.name] = "%s is not an ATA device" % path
    for method, (action, _) in _SCSI_SANITIZE.items():
        rc, out, err = processes.run("sg_opcodes", "--opcode=0x48,%d"
                                     % action, path)
        if rc == 0 and parse_sg_opcodes(out):
            supported.add(method)
        else:
            reasons[method] = ("the device does not report SANITIZE service "
                               "action %d as supported" % action)
    return supported, reasons


def parse_sg_requests(rc, text):
    """``(state, value)`` for :func:`_poll` from sg_requests --progress."""
    match = re.search(r"Progress indication:\s*([\d.]+)%", text)
    if match:
        return "running", float(match.group(1)) / 100.0
    if rc != 0 or re.search(r"sanitize.*fail|medium error", text, re.I):
        return "failed", "the device reports: %s" % text.strip()[-200:]
    return "done", 1.0


def _erase_scsi(manager, device, method, size, progress, sleep=time.sleep):
    path = device["path"]
    _, flags = _SCSI_SANITIZE[method]
    processes.execute("sg_sanitize", "--quick", "--early", *flags, path)

    def state():
        rc, out, err = processes.run("sg_requests", "--progress", path)
        return parse_sg_requests(rc, (out or "") + (err or ""))

    return polling._poll(state, path, method, size, progress,
                         polling._poll_interval(manager), sleep)
