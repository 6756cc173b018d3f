"""Frozen, validated description of a build (the result of config.load_profile). No I/O here.

Every closed choice of a profile is one StrEnum here, checked once when the profile is loaded
(config.py, with the file and line) and used as such by every consumer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .errors import Location


class Mode(StrEnum):
    INITOVERLAYFS = "initoverlayfs"  # stage one cpio + stage two EROFS
    PLAIN = "plain"  # one cpio with the stage-two content


class Compression(StrEnum):
    """The cpio's compressor (stage one, or the plain image): formats/compress.py implements each."""

    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"  # the kernel's legacy lz4 framing

    @property
    def levels(self) -> range:
        """The levels its compressor takes (`compression_level`), checked when the profile loads."""
        return _LEVELS[self]


_LEVELS = {
    Compression.NONE: range(0, 1),  # no level to choose
    Compression.GZIP: range(1, 10),  # zlib
    Compression.XZ: range(0, 10),  # liblzma presets
    Compression.ZSTD: range(1, 23),  # zstd's regular levels (negative "fast" levels are not offered)
    Compression.LZ4: range(1, 13),  # 1-2 lz4 fast, 3-12 lz4hc
}


class Stage2Compression(StrEnum):
    LZ4HC = "lz4hc"
    LZ4 = "lz4"
    NONE = "none"


class Attach(StrEnum):
    """How stage one attaches a stage-two image file (initoverlayfs.conf `attach`)."""

    AUTO = "auto"  # a file-backed mount where the kernel can, else a loop device
    LOOP = "loop"  # a loop device
    FILE = "file"  # a file-backed mount (CONFIG_EROFS_FS_BACKED_BY_FILE, Linux 6.12+)
    DIRECT = "direct"  # bootfs is the EROFS device itself


class HostOnly(StrEnum):
    """Whether `auto` keys are resolved from the target system (docs/hostonly.md)."""

    AUTO = "auto"  # from the target when detection finds the boot filesystem, else generic (warned)
    YES = "yes"  # from the target; a detection failure is a config error
    NO = "no"  # generic: the values below (GENERIC_*), for any machine


AUTO = "auto"  # resolved by resolve/host.py; only bootfstype may keep it (then detected at boot)
# what `auto` means in a generic build: a filesystem labelled "boot" holding the image at its top,
# its type read from its superblock at boot (stage one's ib_fstype), since the build cannot know it
GENERIC_BOOTFS = "LABEL=boot"
GENERIC_BOOTFSTYPE = "auto"
GENERIC_FS = "/initoverlayfs-{kver}.img"


class Panic(StrEnum):
    SHELL = "shell"
    REBOOT = "reboot"
    POWEROFF = "poweroff"


@dataclass(frozen=True)
class FileSpec:
    """An extra file: `source` inside the sysroot, copied to `dest` in the image (stage two)."""

    source: str
    dest: str
    mode: int | None = None  # None: keep the source's permission bits
    optional: bool = False


@dataclass(frozen=True)
class OverlaySpec:
    """Where stage one finds stage two; rendered to etc/initoverlayfs.conf (initoverlayfs key names)."""

    # "auto" (bootfs, bootfstype, fs): resolved by resolve/host.py, from the target (hostonly) or GENERIC_*
    bootfs: str = AUTO  # UUID=, LABEL=, PARTUUID=, PARTLABEL= or /dev/...
    bootfs_hint: str = ""  # a device path tried first, e.g. /dev/vda1
    bootfstype: str = AUTO
    fs: str = AUTO  # image path on bootfs; "" = bootfs itself is the EROFS device
    fstype: str = "erofs"
    timeout: int = 10  # seconds to wait for bootfs
    attach: Attach = Attach.AUTO


@dataclass(frozen=True)
class Stage2Spec:
    compression: Stage2Compression = Stage2Compression.LZ4HC
    level: int = 9
    pcluster_size: int = 65536
    all_drivers: bool = False  # every module of the kernel
    firmware: bool = True  # firmware of the selected drivers
    verity: bool = False  # append a dm-verity hash tree; stage one bakes its root hash and checks every read
    verity_salt: bytes | None = None  # None: derived from the image's content (reproducible)


UKI_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # Debian's systemd-boot-efi


@dataclass(frozen=True)
class UkiSpec:
    """A Unified Kernel Image output: systemd-stub + kernel + stage one (+ .cmdline, .osrel, .uname)."""

    enabled: bool = False
    stub: str = UKI_STUB  # in the sysroot, like the kernel
    cmdline: str = ""  # the .cmdline section: with Secure Boot on, the only command line the kernel gets
    key: str = ""  # sbsign's PEM key and certificate, on the host (not in the sysroot); both or neither
    cert: str = ""

    @property
    def signed(self) -> bool:
        return bool(self.key)


@dataclass(frozen=True)
class Profile:
    source: str  # the profile file, or "<default>"
    mode: Mode = Mode.INITOVERLAYFS
    kernel: str = "auto"
    sysroot: str = "/"
    hostonly: HostOnly = HostOnly.AUTO
    modules: tuple[str, ...] = ()  # modules.d modules to add
    omit_modules: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()  # extra kernel drivers (stage two)
    optional_drivers: tuple[str, ...] = ()
    boot_drivers: tuple[str, ...] = ()  # drivers to reach the boot device (stage one and two)
    binaries: tuple[str, ...] = ()
    files: tuple[FileSpec, ...] = ()
    compression: Compression = Compression.LZ4  # the cpio's: stage one, or the plain image
    compression_level: int | None = None  # None: the compressor's default; else in compression.levels
    early_microcode: bool = True
    cmdline: str = ""  # baked-in kernel command line defaults (the real one wins)
    panic: Panic = Panic.SHELL
    output_dir: str = "out"
    stage2: Stage2Spec = field(default_factory=Stage2Spec)
    overlay: OverlaySpec = field(default_factory=OverlaySpec)
    uki: UkiSpec = field(default_factory=UkiSpec)
    # key path ("binaries[2]", "overlay.bootfs") -> where it was written, for located build errors
    locations: dict[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> Location | None:
        return self.locations.get(key)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("locations")
        salt = self.stage2.verity_salt
        d["stage2"]["verity_salt"] = None if salt is None else salt.hex()
        return d
