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

from . import log
from .cliargs import parser
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError, InitbuildError, Location


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
    from .profile import HostOnly, Mode

    overrides: dict[str, Any] = {}
    if args.hostonly:
        overrides["hostonly"] = HostOnly(args.hostonly)
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
        report = build(p, outdir, force=args.force, modules_dirs=_dirs(args), image_dir=args.boot_dir)
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

    profile = _load(args)
    plan, _ = make_plan(profile, modules_dirs=_dirs(args), image_dir=args.boot_dir or profile.output_dir)
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
    for line in _host_lines(plan):
        print(line)
    return EXIT_OK


def _host_lines(plan: Any) -> list[str]:
    """`initbuild plan`: how the `auto` keys were resolved, and what detection found where."""
    h = plan.host_json()
    r = h["resolved"]
    lines = [
        f"hostonly: {plan.profile.hostonly}, {h['mode']} build: bootfs {r['overlay.bootfs']} "
        f"({r['overlay.bootfstype']}), fs {r['overlay.fs']}"
    ]
    if r["cmdline"]:
        lines.append(f"  cmdline defaults: {r['cmdline']}")
    if plan.host is not None and (found := plan.host.describe()):
        indent = "  " if plan.host_mode else "    "
        if not plan.host_mode:
            lines.append("  detected, not used by this generic build:")
        lines += [f"{indent}{line}" for line in found]
    return lines + [f"  warning: {w}" for w in plan.warnings]


def cmd_manifest(args: argparse.Namespace) -> int:
    from .build import collect, make_plan

    profile = _load(args)
    plan, sysroot = make_plan(
        profile, modules_dirs=_dirs(args), image_dir=args.boot_dir or profile.output_dir
    )
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
    from .formats.erofs.writer import ErofsOptions, write_erofs
    from .manifest import from_tree
    from .publish import atomic_output, source_date_epoch
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
