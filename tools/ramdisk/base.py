"""The cached base of the ramdisk: Debian root, Python deps, kernel.

``build_base`` makes ``<cache>/base-<key>/`` holding ``base.cpio`` (an
uncompressed newc archive of the root), ``vmlinuz`` (the Debian bzImage),
``vmlinux`` (the same kernel as an ELF) and ``base.json``. The key is a
hash of every input (see :func:`base_key`): this module, the lists, the
init and configuration in this directory, ``requirements.txt``, the suite,
the mirror and the kernel package's version. Code that builds anything
else (the agent layer, the outputs) lives in other modules on purpose, so
that changing it does not rebuild the base.
"""

import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tools.ramdisk import vmlinux

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CACHE = os.path.join(REPO_ROOT, ".ramdisk-cache")
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KERNEL_METAPACKAGE = "linux-image-amd64"
PYTHON_SITE = "usr/local/lib/python3.11/dist-packages"
# The files of this directory that shape the base: their bytes are hashed.
BASE_INPUT_FILES = ("packages.txt", "modules.txt", "trim.txt", "init",
                    "udhcpc.script", "teeth-agent.conf", "base.py",
                    "vmlinux.py", "loaders.py")
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*",
                 "/usr/share/bug/*")
DPKG_INCLUDES = ("/usr/share/doc/*/copyright",)


class BuildError(Exception):
    """A build step failed; the message says which and why."""


def log(message, *args):
    print("build-ramdisk: " + (message % args if args else message),
          file=sys.stderr, flush=True)


def run(*argv, cwd=None, stdout=None, env=None):
    """Run a command (argument list); raise BuildError with its stderr."""
    done = subprocess.run(argv, cwd=cwd, stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, check=False)
    if done.returncode != 0:
        raise BuildError("%s failed (exit %d): %s" % (
            " ".join(argv), done.returncode,
            done.stderr.decode(errors="replace").strip()[-3000:]))
    out = done.stdout
    return out.decode(errors="replace") if isinstance(out, bytes) else ""


def read_list(name):
    """The entries of a list file in this directory: one per line, '#'
    comments and blank lines skipped."""
    entries = []
    with open(os.path.join(HERE, name)) as stream:
        for line in stream:
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append(line)
    return entries


def apt_mirror():
    """The Debian mirror apt uses on this machine (deb822 or one-line
    sources), else deb.debian.org."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as stream:
            text = stream.read()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    for path in ["/etc/apt/sources.list"] + sorted(
            glob.glob("/etc/apt/sources.list.d/*.list")):
        if not os.path.exists(path):
            continue
        with open(path) as stream:
            for line in stream:
                words = line.split()
                if len(words) >= 3 and words[0] == "deb" and \
                        words[1].rstrip("/").endswith("/debian"):
                    return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _kernel_dependency():
    done = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE],
                          capture_output=True, text=True, check=False)
    match = re.search(r"Depends:\s*(linux-image-[0-9]\S*)", done.stdout)
    return match.group(1) if match else None


def kernel_package():
    """``(package, version)`` of the kernel ``linux-image-amd64`` points
    to, from the host's apt lists (fetched first when there are none)."""
    package = _kernel_dependency()
    if package is None:
        # A machine whose package lists were never fetched knows nothing.
        log("apt-cache does not know %s: apt-get update", KERNEL_METAPACKAGE)
        run("apt-get", "update", "-q")
        package = _kernel_dependency()
    if package is None:
        raise BuildError("apt-cache knows no %s, even after apt-get update"
                         % KERNEL_METAPACKAGE)
    out = run("apt-cache", "policy", package)
    candidate = re.search(r"Candidate:\s*(\S+)", out)
    if not candidate or candidate.group(1) == "(none)":
        raise BuildError("no installable version of %s" % package)
    return package, candidate.group(1)


def base_key(suite, mirror, kernel, loader_versions=None):
    """The hash naming the cached base: every file that shapes it, the
    Python requirements, the suite, the mirror, the kernel version and
    the versions of the signed UEFI loader packages."""
    digest = hashlib.sha256()
    for name in BASE_INPUT_FILES:
        with open(os.path.join(HERE, name), "rb") as stream:
            digest.update(name.encode() + b"\0" + stream.read() + b"\0")
    with open(os.path.join(REPO_ROOT, "requirements.txt"), "rb") as stream:
        digest.update(b"requirements\0" + stream.read() + b"\0")
    digest.update(("%s\0%s\0%s=%s" % (suite, mirror, *kernel)).encode())
    for package, version in sorted((loader_versions or {}).items()):
        digest.update(("\0%s=%s" % (package, version)).encode())
    return digest.hexdigest()[:16]


# -- the kernel ----

def fetch_kernel(cache, package, version, workdir):
    """Download (once, into the cache) and unpack the kernel package;
    returns ``(unpacked root, kernel release)``."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    pattern = os.path.join(debs, "%s_%s_*.deb" % (
        package, version.replace(":", "%3a")))
    found = glob.glob(pattern)
    if not found:
        log("downloading %s %s", package, version)
        run("apt-get", "download", "-q", "%s=%s" % (package, version),
            cwd=debs)
        found = glob.glob(pattern)
        if not found:
            raise BuildError("apt-get download left no %s" % pattern)
    unpacked = os.path.join(workdir, "kernel")
    run("dpkg-deb", "-x", found[0], unpacked)
    releases = os.listdir(os.path.join(unpacked, "lib", "modules"))
    if len(releases) != 1:
        raise BuildError("expected one kernel release in %s, found %s"
                         % (found[0], releases))
    release = releases[0]
    run("depmod", "-b", unpacked, release)
    return unpacked, release


def module_closure(unpacked, release, names):
    """The module files (paths relative to ``unpacked``) that ``names``
    need, dependencies included; built-in modules need none."""
    files = []
    for name in names:
        out = run("modprobe", "-d", unpacked, "-S", release,
                  "--show-depends", name)
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["insmod"]:
                path = os.path.relpath(words[1], unpacked)
                if path not in files:
                    files.append(path)
            elif words[:1] != ["builtin"]:
                raise BuildError("modprobe: unexpected %r for %s"
                                 % (line, name))
    return files


def install_kernel(unpacked, release, root):
    """Copy the bzImage and the module closure into ``root``."""
    entries = [line.split() for line in read_list("modules.txt")]
    names = [words[0] for words in entries]
    always = [words[0] for words in entries if words[1:] == ["load"]]
    for path in module_closure(unpacked, release, names):
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(unpacked, path), target)
    moddir = os.path.join("lib", "modules", release)
    for name in ("modules.builtin", "modules.builtin.modinfo",
                 "modules.order"):
        source = os.path.join(unpacked, moddir, name)
        if os.path.exists(source):
            shutil.copy2(source, os.path.join(root, moddir, name))
    run("depmod", "-b", root, release)
    os.makedirs(os.path.join(root, "boot"), exist_ok=True)
    shutil.copy2(os.path.join(unpacked, "boot", "vmlinuz-" + release),
                 os.path.join(root, "boot", "vmlinuz-" + release))
    os.makedirs(os.path.join(root, "etc", "teeth-ramdisk"), exist_ok=True)
    with open(os.path.join(root, "etc", "teeth-ramdisk", "modules.load"),
              "w") as stream:
        stream.write("\n".join(always) + "\n")


# -- the root ----

def bootstrap(root, suite, mirror, cache):
    """mmdebstrap the root. The downloaded packages are kept in
    ``cache/debs/archives`` and offered to the next build, so a rebuild
    after a change of the init or the lists downloads only what is new."""
    archives = os.path.join(cache, "debs", "archives")
    os.makedirs(archives, exist_ok=True)
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
            "--include=" + ",".join(read_list("packages.txt")),
            "--skip=download/empty", "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
            "--setup-hook=sync-in %s /var/cache/apt/archives/" % archives,
            "--customize-hook=sync-out /var/cache/apt/archives %s"
            % archives]
    for pattern in DPKG_EXCLUDES:
        argv.append("--dpkgopt=path-exclude=" + pattern)
    for pattern in DPKG_INCLUDES:
        argv.append("--dpkgopt=path-include=" + pattern)
    argv += [suite, root, mirror]
    log("mmdebstrap %s from %s", suite, mirror)
    run(*argv)


def install_requirements(root):
    """pip-install the agent's dependencies for the guest's Python 3.11
    (the same minor version as this build's Python) into its site dir."""
    if sys.version_info[:2] != (3, 11):
        raise BuildError("build with Python 3.11 (the ramdisk's), not %d.%d"
                         % sys.version_info[:2])
    target = os.path.join(root, PYTHON_SITE)
    log("pip install -r requirements.txt into the ramdisk")
    run(sys.executable, "-m", "pip", "install", "--quiet",
        "--disable-pip-version-check", "--no-warn-script-location",
        "--target", target, "-r",
        os.path.join(REPO_ROOT, "requirements.txt"))
    # Console scripts made for the build host's interpreter are useless.
    shutil.rmtree(os.path.join(target, "bin"), ignore_errors=True)


def install_files(root):
    shutil.copy2(os.path.join(HERE, "init"), os.path.join(root, "init"))
    os.chmod(os.path.join(root, "init"), 0o755)
    conf_dir = os.path.join(root, "etc", "teeth-agent")
    os.makedirs(conf_dir, exist_ok=True)
    shutil.copy2(os.path.join(HERE, "teeth-agent.conf"),
                 os.path.join(conf_dir, "teeth-agent.conf"))
    script = os.path.join(root, "etc", "teeth-ramdisk", "udhcpc.script")
    shutil.copy2(os.path.join(HERE, "udhcpc.script"), script)
    os.chmod(script, 0o755)
    # minbase has no init system: busybox gives reboot -f / poweroff -f
    # (direct system calls) and the DHCP client.
    sbin = os.path.join(root, "usr", "local", "sbin")
    os.makedirs(sbin, exist_ok=True)
    for applet in ("reboot", "poweroff", "halt", "udhcpc"):
        if not any(os.path.lexists(os.path.join(root, d, applet))
                   for d in ("usr/sbin", "sbin", "usr/bin", "bin")):
            os.symlink("/bin/busybox", os.path.join(sbin, applet))
    console = os.path.join(root, "dev", "console")
    if not os.path.exists(console):
        os.makedirs(os.path.dirname(console), exist_ok=True)
        os.mknod(console, 0o600 | 0o020000, os.makedev(5, 1))
    with open(os.path.join(root, "etc", "hostname"), "w") as stream:
        stream.write("teeth-ramdisk\n")
    with open(os.path.join(root, "etc", "fstab"), "w") as stream:
        stream.write("# the ramdisk mounts nothing from fstab\n")


def trim(root):
    """Remove what the ramdisk never uses (trim.txt), except the paths its
    ``!`` lines keep."""
    removed = 0
    entries = read_list("trim.txt")
    kept = set()
    for pattern in entries:
        if pattern.startswith("!"):
            kept.update(glob.glob(os.path.join(root, pattern[1:])))
    for pattern in entries:
        if pattern.startswith("!"):
            continue
        for path in glob.glob(os.path.join(root, pattern)):
            if path in kept or any(k.startswith(path + os.sep)
                                   for k in kept):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
    # Keep only the copyright files of the excluded documentation tree.
    for path in glob.glob(os.path.join(root, "usr/share/doc/*/*")):
        # Several packages' doc directories may be links to one (grub's
        # are): its files are gone after the first name was trimmed.
        if not os.path.lexists(path):
            continue
        if not fnmatch.fnmatch(path, "*/copyright"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    return removed


def pack(root, output):
    """An uncompressed newc cpio of ``root`` (sorted, so it is stable)."""
    listing = run("find", ".", "-mindepth", "1", "-print0", cwd=root)
    names = sorted(listing.split("\0")[:-1])
    with open(output + ".tmp", "wb") as stream:
        done = subprocess.run(
            ["cpio", "--null", "--create", "--format=newc", "--quiet",
             "--owner=0:0"],
            input="\0".join(names).encode() + b"\0", cwd=root,
            stdout=stream, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise BuildError("cpio failed: %s" % done.stderr.decode())
    os.replace(output + ".tmp", output)


def build_base(cache, suite, mirror, kernel, key, loader_versions=None):
    """Build the base into ``cache/base-<key>`` unless it is there. With
    ``loader_versions`` (``{package: version}``, see
    :mod:`tools.ramdisk.loaders`) the signed UEFI loaders go into the root
    and, by role, into ``efi/`` of the base for the UEFI outputs."""
    # Imported here: loaders uses this module's helpers.
    from tools.ramdisk import loaders
    base_dir = os.path.join(cache, "base-" + key)
    if os.path.exists(os.path.join(base_dir, "base.json")):
        log("base %s is cached", key)
        return base_dir, False
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="base-", dir=cache)
    try:
        root = os.path.join(workdir, "root")
        unpacked, release = fetch_kernel(cache, kernel[0], kernel[1],
                                         workdir)
        bootstrap(root, suite, mirror, cache)
        signed = {}
        if loader_versions:
            signed = loaders.fetch(cache, loader_versions, workdir)
            loaders.install(signed, root)
        install_requirements(root)
        install_kernel(unpacked, release, root)
        install_files(root)
        trim(root)
        staged = os.path.join(workdir, "staged")
        os.makedirs(staged)
        pack(root, os.path.join(staged, "base.cpio"))
        shutil.copy2(os.path.join(unpacked, "boot", "vmlinuz-" + release),
                     os.path.join(staged, "vmlinuz"))
        vmlinux.extract(os.path.join(staged, "vmlinuz"),
                        os.path.join(staged, "vmlinux"))
        kept = loaders.keep(signed, os.path.join(staged, "efi"))
        info = {"key": key, "suite": suite, "mirror": mirror,
                "kernel_package": kernel[0], "kernel_version": kernel[1],
                "kernel_release": release,
                "uefi_loaders": {
                    "packages": dict(loader_versions or {}),
                    "files": {role: os.path.relpath(path, staged)
                              for role, path in kept.items()}},
                "build_seconds": round(time.monotonic() - started, 1),
                "base_bytes": os.path.getsize(
                    os.path.join(staged, "base.cpio"))}
        with open(os.path.join(staged, "base.json"), "w") as stream:
            json.dump(info, stream, indent=2)
        if os.path.exists(base_dir):
            shutil.rmtree(base_dir)
        os.replace(staged, base_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log("base %s built in %.0f s", key, time.monotonic() - started)
    prune(cache, keep=base_dir)
    return base_dir, True


def prune(cache, keep):
    """Remove older bases: only the newest one is ever used."""
    for path in glob.glob(os.path.join(cache, "base-*")):
        if path != keep and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
