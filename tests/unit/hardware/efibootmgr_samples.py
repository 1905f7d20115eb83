"""``efibootmgr -v`` listings as several versions print them.

Written for these tests in the formats of efibootmgr 0.5 (RHEL 6 era: no
tab between label and device path, ``HD(part,start,size,guid)`` and
``File()`` without a separator), 17 (Debian 12: a tab, ``File()``, the
optional data as dots after the path) and 18 (Debian 13: the loader as
``/\\path``, ``dp:``/``data:`` lines, ``{auto_created_boot_option}``).
"""

DISK_GUID = "3f1a0c52-7d41-4a8e-9e4c-5a0b6c7d8e9f"
OLD_GUID = "aaaaaaaa-bbbb-4ccc-9ddd-eeeeeeeeeeee"
WINDOWS_GUID = "5c9a1e1d-2b3c-4d5e-8f90-a1b2c3d4e5f6"

V17 = (
    "BootCurrent: 0001\n"
    "Timeout: 0 seconds\n"
    "BootOrder: 0001,0000,0002,0003,0004,0005,0006\n"
    "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile("
    "462caa21-7614-4503-836e-8ab6f4662331)\n"
    "Boot0001* UEFI QEMU DVD-ROM QM00003 \tPciRoot(0x0)/Pci(0x1f,0x2)/"
    "Sata(1,65535,0)N.....YM....R,Y.\n"
    "Boot0002* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.00.0.0.0,0,0)N.....YM....R,Y.\n"
    "Boot0003* EFI Internal Shell\tFvVol(7cb8bdc9-f8eb-4f34-aaea-"
    "3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\n"
    "Boot0004* debian\tHD(1,GPT,%s,0x800,0x100000)/File("
    "\\EFI\\debian\\shimx64.efi)\n"
    "Boot0005  old tenant\tHD(1,GPT,%s,0x800,0x32000)/File("
    "\\EFI\\ubuntu\\shimx64.efi)..BO\n"
    "Boot0006* Windows Boot Manager\tHD(2,GPT,%s,0xe1800,0x32000)/File("
    "\\EFI\\Microsoft\\Boot\\bootmgfw.efi)WINDOWS.........x...B.C.D.O.B.J."
    "E.C.T.=.{.9.d.e.a.8.6.2.c.}...\n"
    % (DISK_GUID, OLD_GUID.upper(), WINDOWS_GUID))

V18 = (
    "BootCurrent: 0001\n"
    "BootNext: 0004\n"
    "Timeout: 3 seconds\n"
    "BootOrder: 0004,0001,0000,0007\n"
    "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile("
    "462caa21-7614-4503-836e-8ab6f4662331)\n"
    "      dp: 04 07 14 00 c9 bd b8 7c eb f8 34 4f aa ea 3e e4 af 65 16 a1 /"
    " 04 06 14 00 21 aa 2c 46 14 76 03 45 83 6e 8a b6 f4 66 23 31 / "
    "7f ff 04 00\n"
    "Boot0001* UEFI Misc Device\tPciRoot(0x0)/Pci(0x3,0x0)"
    "{auto_created_boot_option}\n"
    "      dp: 02 01 0c 00 d0 41 03 0a 00 00 00 00 / 01 01 06 00 00 03 / "
    "7f ff 04 00\n"
    "    data: 4e ac 08 81 11 9f 59 4d 85 0e e2 1a 52 2c 59 b2\n"
    "Boot0004* Debian GNU/Linux 13 (trixie)\tHD(1,GPT,%s,0x800,0x100000)/"
    "\\EFI\\debian\\shimx64.efi\n"
    "      dp: 04 01 2a 00 01 00 00 00 00 08 00 00 00 00 00 00 / 7f ff 04 00\n"
    "Boot0007* USB stick\tHD(1,MBR,0x4e1f2a3b,0x800,0x1dcf800)/"
    "\\EFI\\BOOT\\BOOTX64.EFI{auto_created_boot_option}\n"
    "Boot0008* UEFI HTTPv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP)/Uri()"
    "{auto_created_boot_option}\n" % DISK_GUID)

V05 = (
    "BootCurrent: 0002\n"
    "Timeout: 5 seconds\n"
    "BootOrder: 0002,0000,0001\n"
    "Boot0000* EFI Network 0 for IPv4 (00-15-5D-01-02-03) ACPI(a0341d0,0)"
    "PCI(8,0)MAC(00155d010203,0)IPv4(0.0.0.0:0<->0.0.0.0:0,0, 0\n"
    "Boot0001* EFI Hard Drive ACPI(a0341d0,0)PCI(1f,2)SATA(0,0,0)\n"
    "Boot0002* CentOS HD(1,800,64000,%s)File(\\EFI\\centos\\grubx64.efi)\n"
    % DISK_GUID)

#: A hostile or broken listing: control characters, an over-long label,
#: nonsense lines and a bad GUID.
ODD = (
    "warning: something\n"
    "BootOrder: 0001,zzzz,0002\n"
    "Boot0001* evil\x1b[2Jlabel\tHD(1,GPT,not-a-guid,0x800,0x1000)/"
    "File(\\EFI\\x\\y.efi)\n"
    "Boot0002* " + "L" * 5000 + "\tHD(1,GPT,%s,0x800,0x1000)/File("
    "\\EFI\\a\\b.efi)\n"
    "Boot00123 not an entry\n" % OLD_GUID)

SAN_GUID = "11111111-2222-4333-8444-555555555555"
FC_GUID = "66666666-7777-4888-9999-aaaaaaaaaaaa"

#: Entries of the firmware and the operator, in efibootmgr 17's format:
#: none of them may ever be removed, whatever disk node follows the
#: network one (the partition of an iSCSI or Fibre Channel LUN).
NETWORK_V17 = (
    "BootOrder: 0000,0001,0002,0003,0004,0005,0006,0007,0008\n"
    "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile("
    "462caa21-7614-4503-836e-8ab6f4662331)\n"
    "Boot0001* EFI Internal Shell\tFvVol(7cb8bdc9-f8eb-4f34-aaea-"
    "3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\n"
    "Boot0002* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.00.0.0.0,0,0)N.....YM....R,Y.\n"
    "Boot0003* UEFI PXEv6 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv6([::]:<->[::]:,0,0)N.....YM....R,Y.\n"
    "Boot0004* UEFI HTTPv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)/"
    "Uri(http://192.0.2.1/boot/shimx64.efi)N.....YM....R,Y.\n"
    "Boot0005* iSCSI SAN boot\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400123456,"
    "1)/IPv4(192.168.0.10,6,Static,192.168.0.2,192.168.0.1,255.255.255.0)/"
    "iSCSI(iqn.2020-01.test:lun0,1,0x0,None,None,None,TCP)/HD(1,GPT,%s,"
    "0x800,0x100000)/File(\\EFI\\redhat\\shimx64.efi)\n"
    "Boot0006* FC SAN boot\tPciRoot(0x0)/Pci(0x3,0x0)/Pci(0x0,0x0)/Fibre("
    "500143802426baf4,0)/HD(2,GPT,%s,0x1000,0x80000)/File(\\EFI\\sles\\"
    "shim.efi)\n"
    "Boot0007* NVMe-oF boot\tPciRoot(0x0)/Pci(0x4,0x0)/MAC(525400abcdef,1)"
    "/Msg(34,0100000000000000)/HD(1,MBR,0x4e1f2a3b,0x800,0x100000)/File("
    "\\EFI\\BOOT\\BOOTX64.EFI)\n"
    "Boot0008* SAN on an unknown fabric\tPciRoot(0x0)/Pci(0x5,0x0)/Msg(34,"
    "00ff)/HD(1,GPT,%s,0x800,0x100000)/File(\\EFI\\x\\shimx64.efi)\n"
    % (SAN_GUID, FC_GUID, OLD_GUID))

#: The same kinds in efibootmgr 18's format (loader as ``/\\path``, ``dp:``
#: lines, ``{auto_created_boot_option}``).
NETWORK_V18 = (
    "BootOrder: 0000,0001,0002,0004,0005\n"
    "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile("
    "462caa21-7614-4503-836e-8ab6f4662331)\n"
    "      dp: 04 07 14 00 c9 bd b8 7c eb f8 34 4f aa ea 3e e4 af 65 16 a1 /"
    " 7f ff 04 00\n"
    "Boot0001* EFI Internal Shell\tFvVol(7cb8bdc9-f8eb-4f34-aaea-"
    "3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\n"
    "Boot0002* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)"
    "{auto_created_boot_option}\n"
    "    data: 4e ac 08 81 11 9f 59 4d 85 0e e2 1a 52 2c 59 b2\n"
    "Boot0004* UEFI HTTPv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)/"
    "MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)/"
    "Uri(){auto_created_boot_option}\n"
    "Boot0005* iSCSI SAN boot\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400123456,"
    "1)/IPv4(192.168.0.10,6,Static,192.168.0.2,192.168.0.1,255.255.255.0)/"
    "iSCSI(iqn.2020-01.test:lun0,1,0x0,None,None,None,TCP)/HD(1,GPT,%s,"
    "0x800,0x100000)/\\EFI\\redhat\\shimx64.efi\n"
    "      dp: 01 01 06 00 00 02 / 03 0b 25 00 52 54 00 12 34 56 / 7f ff 04"
    " 00\n" % SAN_GUID)

#: MBR disks: efibootmgr prints the 32-bit disk identifier without
#: leading zeros (``0x1abcd`` for a disk whose sfdisk id is
#: ``0x0001abcd``).
MBR_SIGNATURE = "0x4e1f2a3b"
MBR_V17 = (
    "BootOrder: 0001,0002,0003\n"
    "Boot0001* debian\tHD(1,MBR,0x4e1f2a3b,0x800,0x100000)/File("
    "\\EFI\\debian\\shimx64.efi)\n"
    "Boot0002* small signature\tHD(2,MBR,0x1abcd,0x800,0x100000)/File("
    "\\EFI\\ubuntu\\shimx64.efi)\n"
    "Boot0003  gone\tHD(1,MBR,0xdeadbeef,0x800,0x100000)/File("
    "\\EFI\\gone\\shimx64.efi)..BO\n")
