"""Teardown before erase on a real kernel: md RAID1, LVM and dm-crypt left
by a "tenant" are dismantled by ``decom.disk_erase``, then both disks are
erased (the host kernel has neither md nor dm, the ramdisk's has both).

The stack is built in the guest before the agent starts, by a test-only
``/init`` appended to the ramdisk's initramfs as one more cpio archive (the
kernel unpacks them in order, so it replaces the ramdisk's ``/init``, which
it runs afterwards as ``/init.teeth``, a copy of ``tools/ramdisk/init``).
Nothing of this is in the ramdisk itself: production code has no hook for
it. The tenant's stack, on the two virtio disks:

    vda + vdb -> md0 (RAID1) -> LVM tenant/data -> dm-crypt "secret"

The test then checks every teardown step in the result, that both disks
were erased by the agent and that the disk files hold only zeroes.
"""

import os
import shutil
import subprocess

from tests.vm import machine
from tests.vm import test_cycle

MIB = 1024 * 1024
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STACK_READY = "TEETH-TEST: stack ready"

#: The test-only init. Without udevd, libdevmapper creates the device
#: nodes itself (DM_DISABLE_UDEV) and mdadm does too. The LUKS cipher is
#: one the ramdisk kernel has built in (cbc, aes, sha256; xts is a module
#: the ramdisk does not carry).
_STACK_INIT = """#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/lvm /run/cryptsetup
exec </dev/console >/dev/console 2>&1
modprobe -a virtio_pci virtio_blk md_mod raid1 dm_mod dm_crypt
for tick in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    [ -e /sys/block/vdb ] && break
    sleep 0.5
done
set -e
mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 \\
    /dev/vda /dev/vdb
pvcreate -ff -y /dev/md0
vgcreate tenant /dev/md0
lvcreate -y -n data -l 100%FREE tenant
printf 'tenant secret' > /run/tenant.key
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \\
    --pbkdf-force-iterations 1000 --key-file /run/tenant.key \\
    --cipher aes-cbc-plain64 --key-size 256 --hash sha256 \\
    /dev/tenant/data
cryptsetup open --key-file /run/tenant.key /dev/tenant/data secret
dd if=/dev/urandom of=/dev/mapper/secret bs=1M count=4 conv=fsync \\
    2>/dev/null
set +e
echo "STACK_READY: $(ls /sys/block/vda/holders) $(ls /sys/block/md0/holders)"
umount /dev /sys /proc
exec /init.teeth
""".replace("STACK_READY", STACK_READY)


def stacking_initrd(directory, ramdisk_initrd):
    """The ramdisk's initramfs with the test-only init appended."""
    tree = os.path.join(directory, "stack-tree")
    os.makedirs(tree)
    with open(os.path.join(tree, "init"), "w") as stream:
        stream.write(_STACK_INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    shutil.copy2(os.path.join(REPO_ROOT, "tools", "ramdisk", "init"),
                 os.path.join(tree, "init.teeth"))
    overlay = subprocess.run(
        ["cpio", "--create", "--format=newc", "--quiet"],
        input=b"init\ninit.teeth\n", cwd=tree, capture_output=True,
        check=True).stdout
    output = os.path.join(directory, "initrd-stack.img")
    with open(ramdisk_initrd, "rb") as source, \
            open(output, "wb") as stream:
        shutil.copyfileobj(source, stream)
        stream.write(overlay)
    return output


def test_md_lvm_crypt_are_torn_down_and_the_disks_erased(
        ramdisk, endpoints, machines, tmp_path):
    directory = str(tmp_path)
    disks = [test_cycle.make_disk(directory, "vd%s.img" % letter, 64 * MIB)
             for letter in "ab"]
    server = endpoints.start()
    vm = machines.create(
        "teardown", kernel=ramdisk["files"]["vmlinux"],
        initrd=stacking_initrd(directory, ramdisk["files"]["initrd.img"]),
        cmdline=machine.ramdisk_cmdline(test_cycle.ENDPOINT_GUEST_PORT),
        disks=[("virtio", disks[0], "TENANT0001"),
               ("virtio", disks[1], "TENANT0002")],
        forwards={test_cycle.ENDPOINT_GUEST_PORT: server.port})
    vm.start()
    ready = vm.wait_for_console(STACK_READY + r": ([^\r\n]*)",
                                test_cycle.BOOT_TIMEOUT)
    assert "md0" in ready.group(1), vm.console_tail()
    agent_id = test_cycle.wait_for_agent(server, vm).agent_id

    final = test_cycle.run_task(server, agent_id, "decom.disk_erase", {
        "task_id": "erase", "devices": ["/dev/vda", "/dev/vdb"]})
    assert final["state"] == "complete", final
    first, second = final["result"]["devices"]
    commands = [step["command"] for step in first["teardown"]]
    assert commands == [
        "cryptsetup close secret", "vgchange --activate n tenant",
        "mdadm --stop /dev/md0", "mdadm --zero-superblock /dev/vda",
        "mdadm --zero-superblock /dev/vdb"], first["teardown"]
    assert all(step["result"] == "done" for step in first["teardown"])
    assert second["teardown"] == first["teardown"]
    for entry, serial in ((first, "TENANT0001"), (second, "TENANT0002")):
        assert (entry["outcome"], entry["method"], entry["serial"],
                entry["verification"]["result"]) == \
            ("erased", "overwrite", serial, "passed"), entry
    for path in disks:
        assert test_cycle.nonzero_offset(path) is None, path
