"""Disk images for boot tests and benchmarks, built without root (mkfs.ext4 -d).

A "real root" here is a tiny busybox tree whose /sbin/init prints the final marker (uptime and
MemAvailable, like the test module) and powers off: the end of kernel -> stage one -> stage two
-> real root.
"""

from __future__ import annotations

import os
import shutil
import struct
import uuid
import zlib
from pathlib import Path

from ..run import find_tool, run

ROOT_INIT = """#!/bin/sh
# The real root's init, made by initbuild.disks for boot tests: report and power off.
export PATH=/bin
read -r up idle < /proc/uptime
mem=$(sed -n 's/^MemAvailable: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)
line="initbuild-marker: {name} uptime=$up memavailable_kb=$mem"
# what the booted system holds, for tests (e.g. no loop device after a file-backed stage two)
echo "initbuild-root: block devices:" $(ls /sys/block) > /dev/console
# what of the initrd stays behind: mounts (type:dir) and loop devices still bound to a file
mounts=
while read -r src dir type rest; do mounts="$mounts $type:$dir"; done < /proc/mounts
echo "initbuild-root: mounts:$mounts" > /dev/console
loops=
for d in /sys/block/loop*; do [ -e "$d/loop/backing_file" ] && loops="$loops ${{d##*/}}"; done
echo "initbuild-root: bound loop devices:$loops" > /dev/console
echo "<2>$line" > /dev/kmsg
echo "$line" > /dev/console
{extra}
sync
poweroff -f
"""


def make_root_tree(
    dest: Path, *, marker: str = "real-root", extra: str = "", busybox: str = "/bin/busybox"
) -> Path:
    """A minimal root: busybox, /sbin/init printing `marker`, and the usual mount points."""
    # /mnt: systemd's switch-root pivots the old root there, or moves the new root over it, left mounted
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "boot", "etc", "mnt"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(busybox), dest / "bin" / "busybox")
    for applet in ("sh", "sed", "cat", "sync", "poweroff", "dmesg", "grep", "mount", "ls"):
        os.symlink("busybox", dest / "bin" / applet)
    init = dest / "sbin" / "init"
    init.write_text(ROOT_INIT.format(name=marker, extra=extra))
    init.chmod(0o755)
    # an OS tree has one; systemd (modules.d/45systemd) switches root into nothing else
    (dest / "etc" / "os-release").write_text('ID=initbuild-test\nNAME="initbuild test root"\n')
    return dest


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def make_ext4(
    src: Path,
    image: Path,
    *,
    label: str = "",
    uuid: str | None = None,
    extra_mb: int = 16,
    align: int = 1 << 20,
) -> Path:
    """An ext4 image holding `src` (mkfs.ext4 -d: no root, no loop device)."""
    mkfs = find_tool("mkfs.ext4", reason="build test disks", hint="apt-get install e2fsprogs")
    size = dir_size(src) * 5 // 4 + extra_mb * (1 << 20)
    size = -(-size // align) * align
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    argv = [mkfs, "-q", "-F", "-t", "ext4", "-d", str(src), "-E", "root_owner=0:0", "-b", "4096"]
    if label:
        argv += ["-L", label]
    if uuid:
        argv += ["-U", uuid]
    run([*argv, str(image)], env={"E2FSPROGS_FAKE_TIME": "1700000000"})
    return image


def pad_to(image: Path, align: int) -> Path:
    """Grow a file to a multiple of `align` (virtio-pmem wants 2 MiB)."""
    size = image.stat().st_size
    if size % align:
        with open(image, "r+b") as f:
            f.truncate(size + align - size % align)
    return image


# -- partition tables (UEFI 2.10 §5: protective MBR, GPT header and entries; MBR as in DOS) --------

SECTOR = 512
PART_START = 1 << 20  # the one partition starts at 1 MiB, like every partitioning tool's default
GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32
GPT_LINUX_FS = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")  # "Linux filesystem data"
MBR_SIGNATURE = b"\x55\xaa"
MBR_PROTECTIVE = 0xEE
MBR_LINUX = 0x83


def _mbr(disk_signature: int, part_type: int, first_lba: int, sectors: int) -> bytes:
    """A master boot record with one partition entry (CHS fields left at 0xFFFFFE: "use LBA")."""
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", part_type, b"\xfe\xff\xff", first_lba, sectors)
    mbr = bytes(440) + struct.pack("<IH", disk_signature, 0) + entry + bytes(48) + MBR_SIGNATURE
    assert len(mbr) == SECTOR
    return mbr


def _gpt_header(
    disk_guid: uuid.UUID, current: int, backup: int, last_usable: int, entries_lba: int, entries_crc: int
) -> bytes:
    def pack(crc: int) -> bytes:
        return struct.pack(
            "<8sIIIIQQQQ16sQIII",
            GPT_SIGNATURE, GPT_REVISION, GPT_HEADER_SIZE, crc, 0, current, backup,
            2 + GPT_ENTRY_SECTORS, last_usable, disk_guid.bytes_le, entries_lba,
            GPT_ENTRIES, GPT_ENTRY_SIZE, entries_crc,
        )  # fmt: skip

    header = pack(zlib.crc32(pack(0)))
    assert len(header) == GPT_HEADER_SIZE
    return header.ljust(SECTOR, b"\0")


def partitioned_disk(
    fs_image: Path,
    disk: Path,
    *,
    table: str = "gpt",
    part_guid: str = "",
    part_label: str = "",
    disk_id: str = "",
) -> str:
    """Write `disk`: a partition table (gpt or mbr) with one partition at 1 MiB holding `fs_image`.

    Returns the PARTUUID the kernel reports: the GPT partition GUID, or "SSSSSSSS-01" for MBR (the disk
    signature `disk_id`, 8 hex digits). `part_label` is the GPT partition name (PARTLABEL=).
    """
    size = fs_image.stat().st_size
    part_sectors = -(-size // SECTOR)
    first = PART_START // SECTOR
    total = first + part_sectors + (GPT_ENTRY_SECTORS + 1 if table == "gpt" else 0)
    total = -(-total // (PART_START // SECTOR)) * (PART_START // SECTOR)  # a whole number of MiB
    with open(disk, "wb") as out:
        out.truncate(total * SECTOR)
        if table == "mbr":
            signature = int(disk_id or "1b2c3d4e", 16)
            out.write(_mbr(signature, MBR_LINUX, first, part_sectors))
            partuuid = f"{signature:08x}-01"
        elif table == "gpt":
            guid = uuid.UUID(part_guid) if part_guid else uuid.uuid4()
            disk_guid = uuid.UUID(disk_id) if disk_id else uuid.uuid4()
            name = part_label.encode("utf-16-le")
            if len(name) > 72:
                raise ValueError(f"GPT partition name {part_label!r} is longer than 36 UTF-16 units")
            entry = struct.pack(
                "<16s16sQQQ72s",
                GPT_LINUX_FS.bytes_le,
                guid.bytes_le,
                first,
                first + part_sectors - 1,
                0,
                name,
            )
            entries = entry.ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0")
            crc = zlib.crc32(entries)
            last = total - 1
            last_usable = last - GPT_ENTRY_SECTORS - 1
            out.write(_mbr(0, MBR_PROTECTIVE, 1, min(total - 1, 0xFFFFFFFF)))
            out.write(_gpt_header(disk_guid, 1, last, last_usable, 2, crc))
            out.write(entries)
            out.seek((last - GPT_ENTRY_SECTORS) * SECTOR)
            out.write(entries)
            out.write(_gpt_header(disk_guid, last, 1, last_usable, last - GPT_ENTRY_SECTORS, crc))
            partuuid = str(guid)
        else:
            raise ValueError(f"partition table must be gpt or mbr, not {table!r}")
        out.seek(PART_START)
        with open(fs_image, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    return partuuid
