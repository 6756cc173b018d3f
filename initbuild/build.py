"""Orchestration: Profile -> Plan -> Manifests -> writers -> atomically published outputs + build.json."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import __version__, log
from .errors import ConfigError, ConfigErrors, InitbuildError, ResolveError
from .formats import compress
from .formats.verity import VerityParams
from .manifest import Entry, Kind, Manifest
from .modules.context import module_check
from .modules.hooks import Hooks
from .modules.plan import Plan, select
from .modules.spec import discover
from .modules.stages import StageResult, collect_stage
from .profile import Mode, Profile
from .publish import atomic_output, source_date_epoch
from .resolve.host import resolve_host
from .resolve.kconfig import KernelFeatures, Tristate, kernel_features
from .resolve.kernels import resolve_kernel
from .resolve.kmod import KernelModules
from .resources import module_dirs
from .sysroot import Sysroot
from .templates import Renderer

MICROCODE = {  # early cpio path -> firmware directory whose files are concatenated (x86 early loading)
    "/kernel/x86/microcode/GenuineIntel.bin": "/lib/firmware/intel-ucode",
    "/kernel/x86/microcode/AuthenticAMD.bin": "/lib/firmware/amd-ucode",
}


class OutputKind(StrEnum):
    """What a build writes (BuildReport.outputs[].kind)."""

    INITRAMFS = "initramfs"  # the cpio: stage one, or the plain image
    STAGE2 = "stage2"  # the EROFS image (with its dm-verity hash tree appended, under stage2.verity)
    CONF = "conf"  # initoverlayfs.conf, a copy of stage one's
    UKI = "uki"  # the Unified Kernel Image: systemd-stub + kernel + stage one (uki.enabled)


def output_names(kver: str, mode: Mode, *, uki: bool = False) -> dict[OutputKind, str]:
    names = {OutputKind.INITRAMFS: f"initramfs-{kver}.img"}
    if mode is Mode.INITOVERLAYFS:
        names[OutputKind.STAGE2] = f"initoverlayfs-{kver}.img"
        names[OutputKind.CONF] = "initoverlayfs.conf"
    if uki:
        names[OutputKind.UKI] = f"initbuild-{kver}.efi"  # kernel-install's EFI/Linux/<token>-<kver>.efi
    return names


def make_plan(
    profile: Profile, *, modules_dirs: list[Path] | None = None, image_dir: str | Path | None = None
) -> tuple[Plan, Sysroot]:
    """`image_dir`: where the outputs will be on the target (resolve/host.py: absolute, else /boot)."""
    sysroot = Sysroot(profile.sysroot)
    if not sysroot.root.is_dir():
        raise InitbuildError(
            f"sysroot {sysroot.root} does not exist or is not a directory", location=profile.where("sysroot")
        )
    kver = resolve_kernel(sysroot, profile)
    # the `auto` keys resolved from the target or generically: the pipeline reads the profile as before
    profile, host, is_host, warning = resolve_host(profile, sysroot, kver, image_dir)
    if warning:
        log.warning(warning)
    specs = discover(modules_dirs or module_dirs())
    hooks = Hooks()  # each module.py is imported once per build: here, by its check, or at install
    features = kernel_features(sysroot, kver)
    check_kernel_can_boot(profile, features)
    plan = select(
        profile, specs, kver, lambda spec: module_check(spec, sysroot, profile, kver, hooks), hooks=hooks
    )
    if profile.stage2.verity and profile.mode is Mode.INITOVERLAYFS and "verity" not in plan.names():
        # never a silently unverified stage two
        raise ConfigError(
            "stage2.verity: the plan has no 'verity' module to open stage two through dm-verity",
            location=profile.where("omit_modules:verity") or profile.where("stage2.verity"),
            hint="remove 'verity' from omit_modules, or drop stage2.verity",
        )
    warns = (warning,) if warning else ()
    return replace(plan, kernel=features, host=host, host_mode=is_host, warnings=warns), sysroot


# profile name -> the EROFS algorithm it needs (none: stored uncompressed)
_EROFS_ALGORITHM = {"lz4hc": "lz4", "lz4": "lz4"}


def check_kernel_can_boot(profile: Profile, features: KernelFeatures) -> None:
    """What the target kernel's config rules out, as located config errors (never a version guess)."""
    if features.config_source is None:
        log.warning(
            f"kernel {features.kver}: no config found (/boot/config-{features.kver}, IKCONFIG): "
            "assuming modular erofs/overlay/loop, no file-backed EROFS, gzip or uncompressed initramfs"
        )
        return
    errors: list[ConfigError] = []
    comp = str(profile.compression)
    if comp not in features.rd_compressions:
        errors.append(
            ConfigError(
                f"compression: kernel {features.kver} cannot unpack a {comp} initramfs "
                f"(CONFIG_RD_{comp.upper()} is not set in {features.config_source})",
                location=profile.where("compression"),
                hint=f"use one of: {', '.join(sorted(features.rd_compressions))}",
            )
        )
    if profile.mode is Mode.INITOVERLAYFS:
        if features.erofs is Tristate.ABSENT:
            errors.append(
                ConfigError(
                    f"mode: kernel {features.kver} has no EROFS (CONFIG_EROFS_FS is not set in "
                    f"{features.config_source}): stage two cannot be mounted",
                    location=profile.where("mode"),
                    hint="use mode: plain",
                )
            )
        algo = _EROFS_ALGORITHM.get(str(profile.stage2.compression))
        if (
            algo is not None
            and features.erofs is not Tristate.ABSENT
            and algo not in features.erofs_algorithms
        ):
            errors.append(
                ConfigError(
                    f"stage2.compression: kernel {features.kver}'s EROFS cannot read {algo} "
                    f"(it reads: {', '.join(sorted(features.erofs_algorithms)) or 'uncompressed only'})",
                    location=profile.where("stage2.compression"),
                )
            )
    if profile.stage2.verity:
        missing = [
            f"CONFIG_{option}"
            for option, state in (("BLK_DEV_DM", features.dm), ("DM_VERITY", features.dm_verity))
            if state is Tristate.ABSENT
        ]
        if missing:
            errors.append(
                ConfigError(
                    f"stage2.verity: kernel {features.kver} has no dm-verity ({' and '.join(missing)} "
                    f"not set in {features.config_source}): stage two cannot be verified",
                    location=profile.where("stage2.verity"),
                    hint="use a kernel with CONFIG_DM_VERITY, or drop stage2.verity",
                )
            )
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def template_context(plan: Plan, verity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template variables. `verity`: what stage one needs to open stage two through dm-verity
    (stage one under stage2.verity only): the tree's parameters and the files to read first."""
    p = plan.profile
    ov = p.overlay
    fs = ov.fs.replace("{kver}", plan.kver)
    ctx: dict[str, Any] = {
        "version": __version__,
        "kver": plan.kver,
        "panic": str(p.panic),
        "cmdline": p.cmdline,
        "root_timeout": ov.timeout,
        "overlay": {**ov.__dict__, "fs": fs},
        "hostonly": "host" if plan.host_mode else "generic",  # how the `auto` overlay keys were resolved
        "verity": verity,
    }
    # The contract between generator and /init, readable in the image (booster's init config).
    ctx["init_json"] = json.dumps(
        {
            "version": __version__,
            "kernel": plan.kver,
            "panic": str(p.panic),
            "cmdline": p.cmdline,
            "modules": [m.name for m in plan.modules if m.spec.stage.has(2)],
        },
        indent=2,
        sort_keys=True,
    )
    return ctx


# what stage one renders for `initbuild manifest`, where stage two is not written and has no root hash
UNWRITTEN = VerityParams(data_blocks=1, hash_offset=4096, salt=b"", root_hash=bytes(32), uuid="")


def pid1_files(manifest: Manifest) -> tuple[str, ...]:
    """The files stage two's PID 1 runs from: /init and the interpreter its #! line names, as real
    paths. A read error in them would kill PID 1 (a kernel panic) before it could say anything, so
    stage one reads them through dm-verity first and diagnoses a failure itself."""
    init = manifest.resolve("/init")
    if init is None:
        return ()
    data = manifest[init].data or b""
    words = data[2:].split(b"\n", 1)[0].split() if data.startswith(b"#!") else []
    interp = manifest.resolve(words[0].decode()) if words else None
    return (init,) if interp is None else (init, interp)


SHARED = "/etc/initbuild/shared"  # stage one: its files that stage two's PID 1 runs, bound over stage two's


def shared_files(stage1: Manifest, stage2: Manifest) -> tuple[str, ...]:
    """The interpreter of stage two's /init (busybox) when stage one holds the very same file (the same
    sysroot source, at the same real path). Under stage2.verity, stage one binds its copy over stage
    two's before handing over: that copy is in RAM and was authenticated with stage one, so PID 1 runs
    from a file that cannot fail verification (a read error inside PID 1 is a kernel panic), and
    stage one need not read the whole 2 MB of stage two's busybox through dm-verity first to rule
    that out (75 ms of a 2.3 s boot under TCG)."""
    out = []
    for path in pid1_files(stage2)[1:]:
        e1, e2 = stage1.get(path), stage2[path]
        if stage1.resolve(path) != path or e1 is None or e1.source is None:
            continue
        if (e1.source, e1.decompress, e1.data) == (e2.source, e2.decompress, e2.data):
            out.append(path)
    return tuple(out)


@dataclass
class Collected:
    plan: Plan
    sysroot: Sysroot
    stage1: StageResult | None
    stage2: StageResult
    early: Manifest | None = None
    kmods: KernelModules | None = None  # parsed once for both stages
    renderer: Renderer = field(default_factory=Renderer)


def collect(plan: Plan, sysroot: Sysroot, *, stage_one: bool = True) -> Collected:
    """Stage two (or the plain image) first, then stage one: stage one carries facts about the written
    stage two (its dm-verity root hash), so `build` collects it only once stage two is on disk
    (`stage_one=False` here, then `collect_stage_one`). Without them, stage one shows placeholders."""
    kmods = KernelModules(sysroot, plan.kver)
    renderer = Renderer()
    overlay = plan.profile.mode is Mode.INITOVERLAYFS
    with log.step("collecting stage two" if overlay else "collecting the initramfs"):
        stage2 = collect_stage(2, plan, sysroot, renderer, template_context(plan), kmods)
    early = microcode_manifest(sysroot) if plan.profile.early_microcode else None
    col = Collected(plan, sysroot, None, stage2, early, kmods, renderer)
    if overlay and stage_one:
        collect_stage_one(col, None)
    return col


def collect_stage_one(col: Collected, verity: VerityParams | None) -> None:
    """Collect stage one; under stage2.verity, `verity` is the hash tree of the written stage two."""
    plan = col.plan
    facts = None
    if plan.profile.stage2.verity:
        facts = {**(verity or UNWRITTEN).to_dict(), "preread": list(pid1_files(col.stage2.manifest))}
    with log.step("collecting stage one"):
        col.stage1 = collect_stage(
            1, plan, col.sysroot, col.renderer, template_context(plan, facts), col.kmods
        )
    shared = shared_files(col.stage1.manifest, col.stage2.manifest) if plan.profile.stage2.verity else ()
    if shared:
        text = "".join(f"{p}\n" for p in shared)
        entry = Entry(
            SHARED, Kind.FILE, 0o644, data=text.encode(), provenance=("verity", "shared with stage two")
        )
        col.stage1.manifest.add(entry)


def microcode_manifest(sysroot: Sysroot) -> Manifest | None:
    m = Manifest()
    for dest, srcdir in MICROCODE.items():
        if not sysroot.is_dir(srcdir):
            continue
        blobs = [
            sysroot.read_bytes(f"{srcdir}/{n}")
            for n in sysroot.listdir(srcdir)
            if sysroot.is_file(f"{srcdir}/{n}")
        ]
        if blobs:
            m.add(Entry(dest, Kind.FILE, 0o644, data=b"".join(blobs), provenance=("early-microcode", srcdir)))
    return m if len(m) > 1 else None


# -- outputs -------------------------------------------------------------------------------------


@dataclass
class OutputInfo:
    path: str  # file name, in the report's outdir
    kind: OutputKind
    size: int
    sha256: str
    compression: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "kind": str(self.kind)}


@dataclass
class BuildReport:
    """What a build wrote, and how long it took. `to_json()` is build.json's content (plain JSON types)."""

    kver: str
    mode: Mode
    profile: str
    sysroot: str
    outdir: str
    outputs: list[OutputInfo] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    verity: dict[str, Any] | None = None  # stage two's dm-verity parameters (VerityParams.to_dict)
    # which LZ4 implementation wrote stage two ("liblz4 1.9.4 (fixed-output)" or the python-lz4
    # emulation); empty when stage two is uncompressed or there is no stage two
    stage2_compressor: str = ""
    host: dict[str, Any] | None = None  # how `auto` was resolved, from what (Plan.host_json)

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"verity": self.verity} if self.verity is not None else {}
        if self.host is not None:
            extra["host"] = self.host
        if self.stage2_compressor:
            extra["stage2_compressor"] = self.stage2_compressor
        return {
            "initbuild": __version__,
            "kernel": self.kver,
            "kernel_image": f"/boot/vmlinuz-{self.kver}",
            "mode": str(self.mode),
            "profile": self.profile,
            "sysroot": self.sysroot,
            "source_date_epoch": source_date_epoch(),
            "outputs": [o.to_json() for o in self.outputs],
            "counts": self.counts,
            "timings": [{"step": s, "seconds": round(t, 3)} for s, t in self.timings],
            **extra,
        }

    def output(self, kind: OutputKind | str) -> OutputInfo:
        """The output of one kind (a report has at most one of each)."""
        return next(o for o in self.outputs if o.kind == kind)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build(
    profile: Profile,
    outdir: Path,
    *,
    force: bool = False,
    modules_dirs: list[Path] | None = None,
    image_dir: str | Path | None = None,  # where the outputs will be on the target, if not outdir
) -> BuildReport:
    log.timings.clear()
    t0 = time.perf_counter()
    with log.step("planning"):
        plan, sysroot = make_plan(profile, modules_dirs=modules_dirs, image_dir=image_dir or outdir)
    profile = plan.profile  # resolved: no `auto` left
    names = output_names(plan.kver, profile.mode, uki=profile.uki.enabled)
    if not force:
        # the kernel-named images are what --force guards; initoverlayfs.conf and build.json describe
        # the latest build into the directory (as with --all-kernels) and are always replaced
        existing = [n for k, n in names.items() if k is not OutputKind.CONF and (outdir / n).exists()]
        if existing:
            raise ConfigError(
                f"{outdir}: {', '.join(existing)} already exist(s); refusing to overwrite",
                hint="pass --force to replace them (atomically)",
            )
    log.info(f"kernel {plan.kver}, mode {profile.mode}, modules: {' '.join(plan.names())}")
    # Stage two first: stage one bakes in facts about the written image (its dm-verity root hash).
    col = collect(plan, sysroot, stage_one=False)
    epoch = source_date_epoch()
    report = BuildReport(plan.kver, profile.mode, profile.source, str(sysroot.root), str(outdir))
    report.host = plan.host_json()
    initramfs = outdir / names[OutputKind.INITRAMFS]
    if profile.mode is Mode.INITOVERLAYFS:
        verity = _write_stage2(col, outdir / names[OutputKind.STAGE2], profile, epoch, report)
        collect_stage_one(col, verity)
        assert col.stage1 is not None
        _write_cpio(col, col.stage1.manifest, initramfs, profile, epoch, report, "stage one")
        conf = col.stage1.manifest.get("/etc/initoverlayfs.conf")
        if conf is not None and conf.data is not None:
            with atomic_output(outdir / names[OutputKind.CONF]) as f:
                f.write(conf.data)
            report.outputs.append(_info(outdir / names[OutputKind.CONF], OutputKind.CONF, "none"))
        report.counts["stage1_entries"] = len(col.stage1.manifest)
        report.counts["stage1_drivers"] = len(col.stage1.drivers)
    else:
        _write_cpio(col, col.stage2.manifest, initramfs, profile, epoch, report, "plain initramfs")
    if profile.uki.enabled:
        _write_uki(col, initramfs, outdir / names[OutputKind.UKI], report)
    report.outputs.sort(key=lambda o: list(OutputKind).index(o.kind))
    report.counts["stage2_entries"] = len(col.stage2.manifest)
    report.counts["stage2_drivers"] = len(col.stage2.drivers)
    report.timings = list(log.timings) + [("total", time.perf_counter() - t0)]
    with atomic_output(outdir / "build.json") as f:
        f.write(json.dumps(report.to_json(), indent=2).encode() + b"\n")
    return report


def _info(path: Path, kind: OutputKind, compression: str) -> OutputInfo:
    return OutputInfo(path.name, kind, path.stat().st_size, _sha256(path), compression)


def _write_cpio(
    col: Collected,
    manifest: Manifest,
    path: Path,
    profile: Profile,
    epoch: int,
    report: BuildReport,
    what: str,
) -> None:
    from .formats.cpio.writer import CpioOptions, write_initramfs

    comp = compress.Compression(profile.compression)  # the writer's own member for the profile's choice
    segments = []
    if col.early is not None:
        segments.append((col.early, compress.Compression.NONE))
    segments.append((manifest, comp))
    levels = {comp: profile.compression_level} if profile.compression_level is not None else None
    with log.step(f"writing {what} {path.name} ({len(manifest)} entries, {comp})"):
        with atomic_output(path) as f:
            write_initramfs(f, segments, col.sysroot, CpioOptions(mtime=epoch), levels=levels)
    report.outputs.append(_info(path, OutputKind.INITRAMFS, str(comp)))


def _write_stage2(
    col: Collected, path: Path, profile: Profile, epoch: int, report: BuildReport
) -> VerityParams | None:
    """The EROFS image, then (stage2.verity) its dm-verity hash tree, appended before it is published:
    the root hash goes into stage one and build.json."""
    from .formats.erofs.writer import ErofsOptions, write_erofs
    from .formats.verity import append_hash_tree

    s2 = profile.stage2
    opts = ErofsOptions(
        compression=str(s2.compression), level=s2.level, pcluster_size=s2.pcluster_size, build_time=epoch
    )
    manifest = col.stage2.manifest
    verity = None
    with atomic_output(path) as f:
        with log.step(f"writing stage two {path.name} ({len(manifest)} entries, EROFS {s2.compression})"):
            stats = write_erofs(manifest, col.sysroot, f, opts)
            report.stage2_compressor = stats.compressor
        if s2.verity:
            with log.step("appending the dm-verity hash tree to stage two"):
                verity = append_hash_tree(f, salt=s2.verity_salt)
    report.outputs.append(_info(path, OutputKind.STAGE2, str(s2.compression)))
    report.verity = verity.to_dict() if verity is not None else None
    return verity


def _write_uki(col: Collected, initrd: Path, path: Path, report: BuildReport) -> None:
    """systemd-stub + the kernel + `initrd` (+ .cmdline, .osrel, .uname) as one PE, signed if asked."""
    from .formats import uki

    spec, sysroot, kver = col.plan.profile.uki, col.sysroot, col.plan.kver
    kernel = f"/boot/vmlinuz-{kver}"
    osrel = next((p for p in ("/etc/os-release", "/usr/lib/os-release") if sysroot.exists(p)), None)
    for what, p in (("the UEFI stub", spec.stub), ("the kernel", kernel), ("os-release", osrel)):
        if p is None or not sysroot.exists(p):
            raise ResolveError(
                f"uki: {what} {p or '(/etc/os-release, /usr/lib/os-release)'} is not in the sysroot "
                f"{sysroot.root}",
                location=col.plan.profile.where("uki.stub" if what == "the UEFI stub" else "uki"),
                hint="apt-get install systemd-boot-efi" if what == "the UEFI stub" else None,
            )
    assert osrel is not None
    with log.step(f"writing the Unified Kernel Image {path.name}{' (signed)' if spec.signed else ''}"):
        data = uki.build_uki(
            sysroot.read_bytes(spec.stub), sysroot.read_bytes(kernel), initrd.read_bytes(),
            spec.cmdline, sysroot.read_bytes(osrel).decode(), kver,
        )  # fmt: skip
        with atomic_output(path) as f:
            if spec.signed:  # sbsign reads and writes files: both stay beside the output
                with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
                    unsigned, signed = Path(tmp) / "unsigned.efi", Path(tmp) / "signed.efi"
                    unsigned.write_bytes(data)
                    uki.sign_uki(unsigned, signed, key=spec.key, cert=spec.cert)
                    data = signed.read_bytes()
            f.write(data)
    report.outputs.append(_info(path, OutputKind.UKI, "signed" if spec.signed else "unsigned"))
