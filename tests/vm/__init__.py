"""The whole decommission-to-kexec cycle in a qemu virtual machine."""
