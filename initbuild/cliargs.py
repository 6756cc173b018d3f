"""The command line's arguments: argparse subcommands (cli.py runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__

DESCRIPTION = """\
initbuild generates initoverlayfs boot images from a YAML profile.

  stage one  initramfs-KVER.img      a minimal compressed cpio: storage drivers and a mount helper
                                     (/init) that mounts stage two read-only under a tmpfs overlay
  stage two  initoverlayfs-KVER.img  a compressed EROFS image with everything else, decompressed
                                     only when read

The pipeline has printable stages: `config` (the validated profile), `plan` (chosen modules and
why), `manifest` (every path, its source and the module that added it), then `build`.
"""

EPILOG = """\
examples:
  initbuild build                          build from the default profile into ./out
  initbuild build my.yaml -o /boot --force build a profile, replacing existing outputs
  initbuild plan my.yaml                   which modules.d modules, and why
  initbuild manifest --stage 1             what stage one contains
  initbuild ls out/initoverlayfs-*.img     list an EROFS or cpio image
  initbuild erofs rootdir/ root.img        make an EROFS image from a directory (like mkfs.erofs)

exit codes: 0 success, 1 build failure, 2 usage or configuration error.
Timestamps come from SOURCE_DATE_EPOCH (default 0): builds are reproducible.
"""


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", nargs="?", help="profile YAML (default: the shipped default profile)")
    p.add_argument(
        "--sysroot", metavar="DIR", help="build from this tree instead of / (overrides the profile)"
    )
    p.add_argument("--kver", metavar="VERSION", help="kernel version (overrides the profile's `kernel`)")
    p.add_argument("--mode", choices=("initoverlayfs", "plain"), help="override the profile's mode")
    host = p.add_mutually_exclusive_group()
    host.add_argument(
        "--generic",
        dest="hostonly",
        action="store_const",
        const="no",
        help="images for any machine: overlay auto keys get the generic defaults (hostonly: no)",
    )
    host.add_argument(
        "--hostonly",
        dest="hostonly",
        action="store_const",
        const="yes",
        help="images for the target system only; failing to detect its disks is an error (hostonly: yes)",
    )
    p.add_argument(
        "--boot-dir",
        metavar="DIR",
        help="where the images will be on the target, when not the output directory (a hook that "
        "builds into a staging directory): host-aware builds find the boot filesystem from it",
    )
    p.add_argument(
        "--modules-dir",
        metavar="DIR",
        action="append",
        type=Path,
        help="extra modules.d directory (repeatable; later wins)",
    )


def _output_args(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("-v", "--verbose", action="count", default=d(0), help="more output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="only warnings and errors")
    p.add_argument(
        "--debug", action="store_true", default=d(False), help="tracebacks and the commands initbuild runs"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="initbuild",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    ap.add_argument("--version", action="version", version=f"initbuild {__version__}")
    ap.add_argument(
        "--plugin-path",
        action="store_true",
        help="print the path of the kernel-install plugin (link it into /etc/kernel/install.d) and exit",
    )
    # -v/-q/--debug work before the verb and after it: the verb's copies default to SUPPRESS, so
    # they set the value only when given there and otherwise keep what the global ones parsed.
    _output_args(ap, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _output_args(common, defaults=False)
    sub = ap.add_subparsers(dest="verb", metavar="VERB")

    def add(name: str, help: str, desc: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=desc or help,
            parents=[common],
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    b = add(
        "build",
        "build the images of a profile",
        "Build the images of a profile into an output directory.\n"
        "Outputs are written to temporary files and renamed into place; build.json describes them.",
    )
    _profile_args(b)
    b.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        type=Path,
        help="output directory (default: the profile's output.dir, ./out)",
    )
    b.add_argument("--force", action="store_true", help="replace existing outputs")
    b.add_argument("--uki", action="store_true", help="also write a Unified Kernel Image (profile's uki:)")
    b.add_argument(
        "--json",
        action="store_true",
        help="print the build report (what build.json holds: outputs, sizes, sha256, timings) to stdout",
    )
    b.add_argument(
        "--all-kernels",
        action="store_true",
        help="build for every kernel of the sysroot (outputs are named by kernel version)",
    )

    for verb, help in (
        ("config", "print the validated profile"),
        ("plan", "print the chosen modules.d modules, each with why"),
        ("manifest", "print every path of the image: type, mode, source, module"),
    ):
        p = add(verb, help)
        _profile_args(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if verb == "manifest":
            p.add_argument(
                "--stage",
                type=int,
                choices=(1, 2),
                default=None,
                help="1 = stage one, 2 = stage two / plain (default: both)",
            )

    m = add("modules", "list the modules of modules.d with their descriptions")
    m.add_argument(
        "--modules-dir", metavar="DIR", action="append", type=Path, help="extra modules.d directory"
    )
    m.add_argument("--json", action="store_true")

    ls = add("ls", "list an image (EROFS, or cpio in any compression)")
    ls.add_argument("image", type=Path)
    ls.add_argument("--json", action="store_true")
    cat = add("cat", "print one file of an image to stdout")
    cat.add_argument("image", type=Path)
    cat.add_argument("path")
    up = add("unpack", "extract an image into a directory (never writes outside it)")
    up.add_argument("image", type=Path)
    up.add_argument("directory", type=Path)

    e = add("erofs", "make an EROFS image from a directory (initbuild's native writer, like mkfs.erofs)")
    e.add_argument("src_dir", type=Path)
    e.add_argument("image", type=Path)
    e.add_argument("--compress", choices=("lz4hc", "lz4", "none"), default="lz4hc")
    e.add_argument(
        "--level",
        type=int,
        default=9,
        help="lz4hc level 1-12 (default 9, as mkfs.erofs; 12 is ~4x slower for ~0.3%% smaller)",
    )
    e.add_argument(
        "--pcluster-size",
        type=int,
        default=65536,
        metavar="BYTES",
        help="max compressed segment (default 65536)",
    )
    e.add_argument("--force", action="store_true", help="replace an existing image")
    e.add_argument(
        "--keep-owner",
        action="store_true",
        help="keep uid/gid and mtimes of the tree (default: root, SOURCE_DATE_EPOCH)",
    )

    h = add(
        "install-hooks",
        "install Debian's kernel hooks (/etc/kernel/postinst.d/initbuild, postrm.d/initbuild)",
        "Install (or --remove) the hooks Debian's kernel packages run through run-parts:\n"
        "  /etc/kernel/postinst.d/initbuild  builds initramfs-KVER.img and initoverlayfs-KVER.img\n"
        "                                    into /boot when a kernel is installed\n"
        "  /etc/kernel/postrm.d/initbuild    deletes them when the kernel is removed\n"
        "Both run before GRUB's zz-update-grub. The postinst hook runs this initbuild command.",
    )
    h.add_argument(
        "--root", metavar="DIR", type=Path, default=Path("/"), help="install under DIR (default /)"
    )
    h.add_argument("--remove", action="store_true", help="remove the hooks instead")
    return ap
