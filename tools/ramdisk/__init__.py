"""The ramdisk build: see ``tools/build-ramdisk`` and docs/ramdisk.md."""
