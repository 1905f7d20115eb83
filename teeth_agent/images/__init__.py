"""Image handling for the standbye command group.

One module per concern: :mod:`formats` (what an image is, from its bytes),
:mod:`qcow2` (inspection before qemu-img may touch one), :mod:`cache` (the
image cache), :mod:`writer` (streaming an image onto a device),
:mod:`configdrive` (building the config drive), :mod:`partitions` (adding
its partition) and :mod:`boot` (boot loader and kexec target discovery).
"""
