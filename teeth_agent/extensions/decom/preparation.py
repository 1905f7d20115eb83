"""What ``decom.disk_erase`` does to the disks before erasing them, all
together (one array or one NVMe drive spans several devices erased in
parallel): dismantle the stacks on them (:func:`tear_down`) and handle NVMe
drives with several namespaces (:func:`prepare_namespaces`). Both act
through the hardware managers and report each step."""

import os

from teeth_agent import hardware
from teeth_agent.hardware import erase
from teeth_agent.hardware import safety
from teeth_agent.hardware import teardown


def prepare_namespaces(conf, dispatcher, targets, prepared):
    """Handle NVMe drives with several namespaces among ``targets``.

    Returns ``({path: namespace report}, {removed path: path of the
    namespace that replaced it})``. With ``[decom]
    nvme_reset_namespaces`` a drive whose namespaces are all being
    erased (and whose teardown went well) gets one namespace covering
    it (``reset_nvme_namespaces``); otherwise each namespace is erased
    on its own, with the methods that act on one namespace only.
    """
    by_controller = {}
    for path in targets:
        controller = erase.nvme_controller_of({"path": path})
        if controller:
            by_controller.setdefault(controller, []).append(path)
    reports, covered = {}, {}
    dev_root = conf.hardware.dev_root
    for controller, paths in sorted(by_controller.items()):
        present = [os.path.join(dev_root, name) for name in
                   erase.nvme_controller_namespaces(
                       conf.hardware.sysfs_root, controller)]
        if len(present) < 2:
            continue
        report = {"controller": controller, "namespaces": len(present),
                  "reset": False}
        missing = [p for p in present if p not in paths]
        if not conf.decom.nvme_reset_namespaces:
            report["detail"] = ("erased namespace by namespace "
                                "([decom] nvme_reset_namespaces is off)")
        elif missing:
            report["detail"] = ("erased namespace by namespace: the "
                                "reset would delete %s, which is not "
                                "being erased" % ", ".join(missing))
        elif any(prepared.get(p, {}).get("error") or
                 prepared.get(p, {}).get("refused") for p in paths):
            report["detail"] = ("not reset: the teardown of a "
                                "namespace failed")
        else:
            _reset_namespaces(conf, dispatcher, controller, present, report,
                              covered, prepared)
        if not report["reset"] and "left_with" not in report:
            report["note"] = OUTSIDE_NAMESPACES_NOTE
        for path in paths:
            reports[path] = report
    return reports, covered


#: What an erase namespace by namespace does not reach, said in each such
#: result (``namespaces.note``).
OUTSIDE_NAMESPACES_NOTE = (
    "each namespace is erased on its own: capacity of the drive outside its "
    "namespaces (unallocated NVM capacity) is left untouched; a sanitize "
    "(the whole drive) or [decom] nvme_reset_namespaces reaches it")


def namespaces_in_use(conf, dispatcher, controller, expected):
    """Why the namespaces of ``controller`` may not be deleted now (None
    when they may), and ``{path: BlockDevice}`` of those that passed.

    Read live, right before the reset: the controller's namespaces in
    sysfs must still be ``expected`` (paths; one that appeared since
    would be deleted unasked) and each must pass
    :func:`safety.ensure_writable` (not mounted, not swap, not the
    agent's root, not read-only, still listed) and have nothing stacked
    on it (``holders/``: an array or mapping assembled since the
    teardown).
    """
    dev_root = conf.hardware.dev_root
    now = [os.path.join(dev_root, name) for name in
           erase.nvme_controller_namespaces(conf.hardware.sysfs_root,
                                            controller)]
    if sorted(now) != sorted(expected):
        return ("the namespaces of %s changed since the erase began (now "
                "%s)" % (controller, ", ".join(now) or "none")), {}
    problems, devices = [], {}
    for path in now:
        try:
            devices[path] = safety.ensure_writable(path, conf, dispatcher)
        except safety.DeviceNotEligible as exc:
            problems.append("%s is in use (%s): %s"
                            % (path, exc.kind, exc.reason))
    held = teardown.remaining([os.path.basename(path) for path in now], conf)
    for name, layers in sorted(held.items()):
        problems.append("%s is in use (%s): %s is stacked on it"
                        % (os.path.join(dev_root, name), safety.HOLDER,
                           ", ".join(layers)))
    return "; ".join(problems) or None, devices


def _left_with(conf, controller, steps):
    """What a reset that failed once it began left on the drive,
    as a sentence, from the steps and the namespaces sysfs shows now."""
    now = [os.path.join(conf.hardware.dev_root, name) for name in
           erase.nvme_controller_namespaces(conf.hardware.sysfs_root,
                                            controller)]
    done = [" ".join(str(step.get("command", "")).split()[:2])
            for step in steps if step.get("result") == "done"]
    state = "steps done: %s; the kernel now shows %s; nothing was erased" % (
        ", ".join(done) or "none", ", ".join(now) or "no namespace")
    if any(command.endswith("delete-ns") for command in done):
        state += ("; the old namespaces are deleted: the drive needs a "
                  "namespace created and attached (nvme create-ns, "
                  "attach-ns) before it can be erased")
    return state


def _reset_namespaces(conf, dispatcher, controller, present, report,
                      covered, prepared):
    dev_root = conf.hardware.dev_root
    busy, devices = namespaces_in_use(conf, dispatcher, controller,
                                      present)
    if busy:
        # Nothing is deleted; each namespace goes through its own live
        # check again before it is erased (a mounted one is skipped).
        report["detail"] = ("not reset, nothing was deleted: %s; erased "
                            "namespace by namespace" % busy)
        report["refused"] = busy
        return
    try:
        answer = dispatcher.call("reset_nvme_namespaces", {
            "path": os.path.join(dev_root, controller),
            "name": controller, "namespaces": present})
    except hardware.HardwareManagerError as exc:
        report["steps"] = list(getattr(exc, "steps", []))
        if not report["steps"]:
            # Nothing was changed (the drive cannot manage namespaces):
            # the namespaces are erased one by one, as without the
            # option.
            report["detail"] = ("erased namespace by namespace: %s"
                                % exc)
            return
        left = _left_with(conf, controller, report["steps"])
        report["detail"] = "the namespace reset failed: %s; %s" % (exc, left)
        report["left_with"] = [
            os.path.join(dev_root, name) for name in
            erase.nvme_controller_namespaces(conf.hardware.sysfs_root,
                                             controller)]
        for path in present:
            prepared[path]["error"] = report["detail"]
            # The namespace may be gone: its entry is still a failed
            # record naming the drive it was on.
            prepared[path]["device"] = devices[path]
        return
    new = os.path.join(dev_root, answer["namespace"])
    report.update(reset=True, steps=answer.get("steps", []),
                  namespace=new, size_bytes=answer.get("size_bytes"))
    for path in present:
        if path != new:
            covered[path] = new
    prepared.setdefault(new, {"teardown": []})


def tear_down(conf, dispatcher, targets):
    """Dismantle what is stacked on ``targets`` (paths), before any of
    them is erased: ``{path: {"teardown": [steps], "refused": reason
    (nothing may be done to the disk), "error": message (a step
    failed)}}`` (see :mod:`teeth_agent.hardware.teardown`).

    Stacks are found together because one array may span several of
    the disks erased in parallel.
    """
    names = {os.path.basename(path): path for path in targets}
    found = teardown.plan(list(names), conf)
    prepared = {path: {"teardown": []} for path in targets}
    for name, reason in found.refused.items():
        prepared[names[name]]["refused"] = reason
    for stack in found.stacks:
        paths = [names[disk] for disk in stack.disks]
        error = None
        try:
            steps = dispatcher.call(
                "dismantle_stack",
                stack.as_dict(conf.hardware.dev_root)) or []
        except hardware.NoManagerError:
            steps = []
            error = "no hardware manager can dismantle %s" % ", ".join(
                layer.name for layer in stack.layers)
        except hardware.HardwareManagerError as exc:
            steps = getattr(exc, "steps", [])
            error = str(exc)
        left = teardown.remaining(stack.disks, conf)
        if left and not error:
            error = "; ".join("%s is still stacked on %s after the "
                              "teardown" % (", ".join(layers), disk)
                              for disk, layers in sorted(left.items()))
        for path in paths:
            prepared[path]["teardown"] = list(steps)
            if error:
                prepared[path]["error"] = "teardown failed: %s" % error
    return prepared
