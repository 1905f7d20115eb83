"""A machine's inventory and a spec it meets, for the qc tests."""

INVENTORY = {
    "system": {"vendor": "ACME", "product": "Roadrunner 9000",
               "serial": "RR9-001", "uuid": None, "bios_version": "1.0"},
    "cpu": {"count": 64, "model": "ACME Xeon 6430 @ 2.10GHz",
            "arch": "x86_64"},
    "memory": {"total_bytes": 256 * 1024 ** 3 - 3 * 1024 ** 3},
    "disks": [
        {"path": "/dev/nvme0n1", "size_bytes": 1600321314816,
         "model": "ACME NVMe 1.6TB", "rotational": False},
        {"path": "/dev/nvme1n1", "size_bytes": 1600321314816,
         "model": "ACME NVMe 1.6TB", "rotational": False},
        {"path": "/dev/sda", "size_bytes": 4000787030016,
         "model": "ACME HDD 4TB", "rotational": True},
    ],
    "nics": [{"name": "eth0", "mac": "52:54:00:00:00:01",
              "speed_mbps": 25000, "link": True},
             {"name": "eth1", "mac": "52:54:00:00:00:02",
              "speed_mbps": 25000, "link": True}],
}

SPEC = {
    "cpu": {"count": 64, "model": "Xeon 6430"},
    "memory": {"total_bytes": 256 * 1024 ** 3},
    "disks": [{"count": 2, "size_bytes": 1600321314816, "model": "NVMe",
               "rotational": False},
              {"count": 1, "rotational": True}],
    "nics": {"count": 2, "min_speed_mbps": 10000},
}
