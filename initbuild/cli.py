"""Command line: argparse subcommands; maps exceptions to exit codes (0 ok, 1 build, 2 usage/config)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__, log
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError, InitbuildError, Location

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


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.plugin_path:
        from .resources import kernel_install_plugin

        print(kernel_install_plugin())
        return EXIT_OK
    if args.verb is None:
        ap.print_usage(sys.stderr)
        print("initbuild: a VERB is required (see initbuild --help)", file=sys.stderr)
        return EXIT_USAGE
    level = log.QUIET if args.quiet else log.NORMAL + args.verbose
    if args.debug:
        level = log.DEBUG
    log.set_level(level)
    try:
        return VERBS[args.verb](args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except InitbuildError as e:
        if args.debug:
            traceback.print_exc()
        for line in str(e).splitlines():
            print(f"initbuild: {line}" if not line.startswith(" ") else line, file=sys.stderr)
        return e.exit_code


def _load(args: argparse.Namespace) -> Any:
    from .config import load_profile
    from .profile import Mode

    overrides: dict[str, Any] = {}
    if args.sysroot:
        overrides["sysroot"] = str(args.sysroot)
    if args.kver:
        overrides["kernel"] = args.kver
    if args.mode:
        overrides["mode"] = Mode(args.mode)
    return load_profile(args.profile, overrides)


def _dirs(args: argparse.Namespace) -> list[Path] | None:
    from .resources import module_dirs

    return module_dirs(args.modules_dir or ())


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .build import build
    from .resolve.kernels import host_kernels
    from .sysroot import Sysroot

    profile = _load(args)
    if args.uki:
        profile = replace(profile, uki=replace(profile.uki, enabled=True))
    outdir = args.output or Path(profile.output_dir)
    profiles = [profile]
    if args.all_kernels:
        kernels = host_kernels(Sysroot(profile.sysroot))
        if not kernels:
            raise InitbuildError(
                f"no kernels found in {profile.sysroot} (/boot/vmlinuz-V with /lib/modules/V)"
            )
        profiles = [replace(profile, kernel=k) for k in kernels]
    reports = []
    for p in profiles:
        report = build(p, outdir, force=args.force, modules_dirs=_dirs(args))
        reports.append(report.to_json())
        for o in report.outputs:
            log.info(f"  {outdir / o.path}  {o.size / 1e6:8.2f} MB  {o.kind} ({o.compression})")
        log.info(f"built {report.kver} in {report.timings[-1][1]:.2f} s; details in {outdir / 'build.json'}")
    if args.json:
        print(json.dumps(reports if args.all_kernels else reports[0], indent=2, default=str))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    profile = _load(args)
    data = profile.to_json()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        _print_tree(data)
    return EXIT_OK


def _print_tree(data: dict[str, Any], indent: str = "") -> None:
    for k, v in data.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print_tree(v, indent + "  ")
        elif isinstance(v, (list, tuple)):
            print(f"{indent}{k}: [{', '.join(str(x) for x in v)}]")
        else:
            print(f"{indent}{k}: {v}")


def cmd_plan(args: argparse.Namespace) -> int:
    from .build import make_plan

    plan, _ = make_plan(_load(args), modules_dirs=_dirs(args))
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
        return EXIT_OK
    print(f"kernel {plan.kver}, mode {plan.profile.mode}, sysroot {plan.profile.sysroot}")
    for m in plan.modules:
        print(f"  {m.spec.priority:02d}{m.name:<16} stage {m.spec.stage:<4}  {m.reason}")
    for name, why in plan.unavailable:
        print(f"  (not used) {name}: {why}")
    if plan.kernel is not None:
        print("kernel config:")
        for line in plan.kernel.describe():
            print(f"  {line}")
    return EXIT_OK


def cmd_manifest(args: argparse.Namespace) -> int:
    from .build import collect, make_plan

    plan, sysroot = make_plan(_load(args), modules_dirs=_dirs(args))
    col = collect(plan, sysroot)
    stages = {1: col.stage1, 2: col.stage2}
    wanted = [args.stage] if args.stage else [s for s in (1, 2) if stages[s] is not None]
    if args.json:
        out = {f"stage{s}": stages[s].manifest.to_json() for s in wanted if stages[s] is not None}  # type: ignore[union-attr]
        print(json.dumps(out, indent=1))
        return EXIT_OK
    for s in wanted:
        res = stages[s]
        if res is None:
            raise ConfigError(f"there is no stage {s} in {plan.profile.mode} mode")
        print(f"# stage {s}: {len(res.manifest)} entries")
        for e in res.manifest.sorted():
            src = e.source or e.target or (f"<{len(e.data)} bytes>" if e.data is not None else "")
            if e.rdev:
                src = f"{e.rdev[0]}:{e.rdev[1]}"
            print(f"{e.kind:<8} {e.mode:04o} {e.path:<56} {src:<48} {','.join(e.provenance)}")
    return EXIT_OK


def cmd_modules(args: argparse.Namespace) -> int:
    from .modules.spec import discover
    from .resources import module_dirs

    specs = discover(module_dirs(args.modules_dir or ()))
    rows = sorted(specs.values(), key=lambda s: (s.priority, s.name))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "priority": s.priority,
                        "stage": str(s.stage),
                        "check": s.check.name.lower(),
                        "requires": list(s.requires),
                        "description": s.description,
                        "path": str(s.path),
                    }
                    for s in rows
                ],
                indent=2,
            )
        )
        return EXIT_OK
    for s in rows:
        check = "default" if s.check.name == "INCLUDE" else "on demand"
        print(f"{s.priority:02d}{s.name:<16} [{s.stage}, {check}] {s.description}")
    return EXIT_OK


@contextlib.contextmanager
def _reading(image: str) -> Iterator[None]:
    """Errors met while reading an image name it (a corrupt one says only what and where inside)."""
    try:
        yield
    except InitbuildError as e:
        if e.location is None:
            e.location = Location(Path(image))
        raise


def cmd_ls(args: argparse.Namespace) -> int:
    from .formats.inspect import open_image, uki_lines, uki_sections

    with _reading(args.image):
        sections = uki_sections(args.image)  # a UKI: its sections, then its embedded initramfs
        reader = open_image(args.image)
        members = list(reader.members())
    listed = [{**m.__dict__, "kind": str(m.kind), "mode": f"{m.mode:04o}"} for m in members]
    if args.json:
        uki = {"sections": [s._asdict() for s in sections], "initrd": listed} if sections else None
        print(json.dumps(uki or listed, indent=1))
    else:
        print("\n".join([*(uki_lines(sections) if sections else []), *(m.ls_line() for m in members)]))
    return EXIT_OK


def cmd_cat(args: argparse.Namespace) -> int:
    from .formats.inspect import find, open_image
    from .manifest import Kind

    with _reading(args.image):
        reader = open_image(args.image)
        m = find(reader, args.path)
        if m.kind not in (Kind.FILE, Kind.HARDLINK):
            raise InitbuildError(f"{args.path} is a {m.kind}, not a file")
        if m.kind is Kind.HARDLINK:
            assert m.target is not None
            m = find(reader, m.target)
        data = reader.read(m)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return EXIT_OK


def cmd_unpack(args: argparse.Namespace) -> int:
    from .formats.inspect import open_image, unpack

    with _reading(args.image):
        n = unpack(open_image(args.image), args.directory)
    log.info(f"unpacked {n} entries into {args.directory}")
    return EXIT_OK


def cmd_erofs(args: argparse.Namespace) -> int:
    from .publish import atomic_output, source_date_epoch
    from .formats.erofs.writer import ErofsOptions, write_erofs
    from .manifest import from_tree
    from .sysroot import Sysroot

    if not args.src_dir.is_dir():
        raise ConfigError(f"{args.src_dir}: not a directory")
    if args.image.exists() and not args.force:
        raise ConfigError(f"{args.image} exists; refusing to overwrite", hint="pass --force to replace it")
    if not 1 <= args.level <= 12:
        raise ConfigError(f"--level {args.level}: must be 1..12")
    if args.pcluster_size % 4096 or not 4096 <= args.pcluster_size <= 1 << 20:
        raise ConfigError(f"--pcluster-size {args.pcluster_size}: must be a multiple of 4096 up to 1048576")
    sysroot = Sysroot(args.src_dir)
    with log.step(f"scanning {args.src_dir}"):
        manifest = from_tree(
            sysroot, preserve_owner=args.keep_owner, preserve_mtime=args.keep_owner, xattrs=True
        )
    opts = ErofsOptions(
        compression=args.compress,
        level=args.level,
        pcluster_size=args.pcluster_size,
        build_time=source_date_epoch(),
    )
    with log.step(f"writing {args.image} ({len(manifest)} entries, {args.compress})"):
        with atomic_output(args.image) as f:
            stats = write_erofs(manifest, sysroot, f, opts)
    log.info(f"{args.image}: {os.path.getsize(args.image) / 1e6:.2f} MB, {stats}")
    return EXIT_OK


def cmd_install_hooks(args: argparse.Namespace) -> int:
    from .hooks import install_hooks, remove_hooks, shadowing_generators

    if args.remove:
        for change in remove_hooks(args.root):
            print(change)
        return EXIT_OK
    for change in install_hooks(args.root):
        print(change)
    for other in shadowing_generators(args.root):
        log.warning(
            f"{other} also writes /boot/initrd.img-KVER, which GRUB's update-grub boots in preference "
            "to initramfs-KVER.img"
        )
    return EXIT_OK


VERBS = {
    "build": cmd_build,
    "config": cmd_config,
    "plan": cmd_plan,
    "manifest": cmd_manifest,
    "modules": cmd_modules,
    "ls": cmd_ls,
    "cat": cmd_cat,
    "unpack": cmd_unpack,
    "erofs": cmd_erofs,
    "install-hooks": cmd_install_hooks,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
