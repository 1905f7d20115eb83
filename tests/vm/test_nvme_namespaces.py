"""An NVMe drive carved into two namespaces (qemu's nvme controller with
two nvme-ns devices) is erased namespace by namespace by
``decom.disk_erase`` (``[decom] nvme_reset_namespaces`` off, the default):
no method that would act on the whole drive is used, both namespace files
end up zero, and each result entry says how the drive was handled."""

from tests.vm import machine
from tests.vm import test_cycle

MIB = 1024 * 1024


def test_each_namespace_is_erased_alone(ramdisk, endpoints, machines,
                                        tmp_path):
    directory = str(tmp_path)
    files = [test_cycle.make_disk(directory, "ns%d.img" % nsid, 32 * MIB)
             for nsid in (1, 2)]
    server = endpoints.start()
    vm = machines.create(
        "namespaces", kernel=ramdisk["files"]["vmlinux"],
        initrd=ramdisk["files"]["initrd.img"],
        cmdline=machine.ramdisk_cmdline(test_cycle.ENDPOINT_GUEST_PORT),
        disks=[("nvme-ns", files[0], "NVMENS0001"),
               ("nvme-ns", files[1], "NVMENS0001")],
        forwards={test_cycle.ENDPOINT_GUEST_PORT: server.port})
    vm.start()
    agent_id = test_cycle.wait_for_agent(server, vm).agent_id
    final = test_cycle.run_task(server, agent_id, "decom.disk_erase", {
        "task_id": "erase", "devices": ["/dev/nvme0n1", "/dev/nvme0n2"]})
    assert final["state"] == "complete", final
    for entry in final["result"]["devices"]:
        assert entry["outcome"] == "erased", entry
        assert entry["namespaces"]["namespaces"] == 2, entry
        assert entry["namespaces"]["reset"] is False, entry
        assert not entry["method"].startswith("nvme_sanitize"), entry
        # A format that qemu applies to every namespace (fna bits 0/1) is
        # refused for the same reason as a sanitize.
        reasons = {skipped["method"]: skipped["reason"]
                   for skipped in entry["skipped_methods"]}
        if entry["method"] == "overwrite":
            assert "2 namespaces" in reasons["nvme_format_user"], reasons
        assert entry["verification"]["result"] == "passed", entry
    for path in files:
        assert test_cycle.nonzero_offset(path) is None, path
