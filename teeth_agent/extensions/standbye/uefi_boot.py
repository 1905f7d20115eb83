"""run_image's boot-mode decisions: UEFI boot entries and the kexec choice.

The command group decides, the hardware managers act (``get_boot_mode``,
``list_boot_entries``, ``create_boot_entry``, ``delete_boot_entry``,
``set_boot_order``, ``set_boot_next``, ``install_uefi_boot_loader``). The
decision table is :func:`kexec_plan` (documented in docs/standbye.md):

========  =====================  ================  ==========================
kernel    running kernel         sbverify --list   what the agent does
========  =====================  ================  ==========================
none      any                    -                 reboot (``no_kernel``)
found     no lockdown, SB off    -                 ``kexec -l``
found     lockdown or SB on      unsigned          reboot (``kernel_unsigned``)
found     lockdown or SB on      signed/unknown    ``kexec -s``; refused:
                                                   reboot
                                                   (``signature_rejected``)
========  =====================  ================  ==========================

Any other kexec failure reboots too (``kexec_failed``). A reboot in UEFI
mode sets BootNext to the entry just created, so the machine boots the
image whatever BootOrder the firmware keeps.
"""

import logging

from teeth_agent.hardware import efi

LOG = logging.getLogger(__name__)

KEXEC = "kexec"
REBOOT = "reboot"
#: ``boot.reason`` codes and the sentence that goes with each
#: (``boot.reason_text``).
REASONS = {
    "no_kernel": "No kernel was found in the image, so the machine reboots "
                 "into the image's own boot loader.",
    "kernel_unsigned": "The running kernel accepts only signed kernels "
                       "(Secure Boot or lockdown) and the image's kernel "
                       "carries no signature, so the machine reboots into "
                       "the image's boot loader.",
    "signature_rejected": "The running kernel refused the image's kernel "
                          "(its signature is not trusted, or lockdown "
                          "forbids the load), so the machine reboots into "
                          "the image's boot loader.",
    "kexec_failed": "kexec could not load the image's kernel, so the "
                    "machine reboots into the image's boot loader.",
}


def kexec_plan(found, state, signed):
    """``(method, file_load, reason)`` for the kernel ``found`` (or None)
    under the running ``state``; ``signed`` is what ``sbverify --list``
    said (True, False or None). ``reason`` is None for a kexec."""
    if found is None:
        return REBOOT, False, "no_kernel"
    file_load = efi.signed_load_required(state)
    if file_load and signed is False:
        return REBOOT, True, "kernel_unsigned"
    return KEXEC, file_load, None


def reason_fields(reason):
    return {"reason": reason,
            "reason_text": REASONS.get(reason) if reason else None}
