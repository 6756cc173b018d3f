"""Profile loading: YAML (with locations) -> validated, frozen Profile. Every error is reported."""

from __future__ import annotations

from dataclasses import fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from . import yamlread
from .errors import ConfigError, Location
from .manifest import PathError, check_dest
from .profile import (
    AUTO,
    Attach,
    Compression,
    FileSpec,
    HostOnly,
    Mode,
    OverlaySpec,
    Panic,
    Profile,
    Stage2Compression,
    Stage2Spec,
    UkiSpec,
)
from .resources import default_profile

DEFAULT_PROFILE = default_profile()

BOOTFS_PREFIXES = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/")


def _values(enum: type[StrEnum], sep: str = " ") -> str:
    return sep.join(enum)


# Top-level keys with a one-line description: the source of `initbuild config --keys` and the README.
PROFILE_KEYS: dict[str, str] = {
    "mode": "initoverlayfs (stage one cpio + stage two EROFS, default) or plain (one cpio)",
    "kernel": "kernel version, or 'auto': the newest with both /boot/vmlinuz-V and /lib/modules/V",
    "sysroot": "the tree to build from (default /)",
    "hostonly": f"{_values(HostOnly, ' | ')}: resolve overlay.bootfs/bootfstype/fs 'auto', the root's "
    "type and the storage drivers from the target system (default auto; docs/hostonly.md)",
    "modules": "modules.d modules to add to those included by default",
    "omit_modules": "modules.d modules never to include",
    "drivers": "extra kernel drivers (names or aliases) for stage two",
    "optional_drivers": "like drivers, but only a warning when missing",
    "boot_drivers": "drivers needed to reach the boot device: in stage one too",
    "binaries": "extra programs (names searched in the sysroot's PATH, or absolute paths)",
    "files": "extra files: a path, or {source, dest, mode, optional}",
    "compression": f"compression of the cpio (stage one, or the plain image): {_values(Compression)}",
    "compression_level": "level for that compressor (default: each format's own)",
    "early_microcode": "prepend an uncompressed early cpio with CPU microcode when the sysroot has it",
    "cmdline": "default kernel command line options baked into the image; the boot command line wins",
    "panic": f"what /init does after a failure: {_values(Panic)} (default {Profile.panic})",
    "output": "{dir}: where outputs go (default ./out)",
    "stage2": f"{{compression: {_values(Stage2Compression, '|')}, level, pcluster_size, all_drivers, "
    "firmware, verity, verity_salt}",
    "overlay": f"{{bootfs, bootfs_hint, bootfstype, fs, fstype, timeout, attach: {_values(Attach, '|')}}}: "
    "where stage two is (bootfs, bootfstype, fs default to auto: see hostonly)",
    "uki": "{enabled, stub, cmdline, key, cert}: also write a Unified Kernel Image (signed with key+cert)",
}
STAGE2_KEYS = ("compression", "level", "pcluster_size", "all_drivers", "firmware", "verity", "verity_salt")
UKI_KEYS = ("enabled", "stub", "cmdline", "key", "cert")
VERITY_SALT_MAX = 256  # bytes: sizeof(verity_sb.salt), formats/verity.py SALT_MAX
OVERLAY_KEYS = ("bootfs", "bootfs_hint", "bootfstype", "fs", "fstype", "timeout", "attach")
FILE_KEYS = ("source", "dest", "mode", "optional")


def load_profile(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Profile:
    """Load a profile file (the shipped default when None) and apply command-line overrides."""
    file = Path(path) if path is not None else DEFAULT_PROFILE
    if file.is_dir():
        raise ConfigError("is a directory, expected a profile file (.yaml)", location=Location(file))
    root = yamlread.load_file(file)
    profile = _read_profile(root, str(file))
    if overrides:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "kernel" in overrides and (problem := _check_kver(overrides["kernel"])):
            raise ConfigError(f"--kver: {problem}")
        # an overridden value was not written in the file: errors about it must not point there
        locs = {k: v for k, v in profile.locations.items() if k not in overrides}
        profile = replace(profile, **overrides, locations=locs)
    return profile


def load_profile_text(text: str, name: str = "<string>") -> Profile:
    return _read_profile(yamlread.parse(text, name), name)


def _read_profile(root: yaml.Node | None, file: str) -> Profile:
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
        # no document, or an empty one: a truncated file, or the wrong file
        raise ConfigError(
            "the profile is empty (no YAML document, only comments or nothing)",
            location=Location(file, 1),
            hint="write {} to build with every default",
        )
    r = yamlread.Reader(file)
    m = r.mapping(root, "", PROFILE_KEYS)
    kw: dict[str, Any] = {"source": file}
    locs: dict[str, Location] = {k: r.loc(v) for k, v in m.items()}

    # Values are tested with `is not None`: 0, false and "" are values (and "" is checked), not absent.
    if "mode" in m:
        kw["mode"] = r.enum(m["mode"], "mode", Mode)
    if "kernel" in m and (kver := r.scalar(m["kernel"], "kernel", str)) is not None:
        kw["kernel"] = r.checked(m["kernel"], "kernel", kver, _check_kver)
    if "sysroot" in m and (root_dir := r.scalar(m["sysroot"], "sysroot", str)) is not None:
        kw["sysroot"] = r.checked(m["sysroot"], "sysroot", root_dir, _check_nonempty)
    if "hostonly" in m:
        kw["hostonly"] = _read_hostonly(r, m["hostonly"])
    for key in ("modules", "omit_modules", "drivers", "optional_drivers", "boot_drivers", "binaries"):
        if key in m:
            values = []
            for i, item in enumerate(r.seq(m[key], key) or []):
                name = r.scalar(item, f"{key}[{i}]", str)
                if name is not None and r.checked(item, f"{key}[{i}]", name, _check_name) is not None:
                    values.append(name)
                    locs[f"{key}[{i}]"] = r.loc(item)
                    locs.setdefault(f"{key}:{name}", r.loc(item))
            kw[key] = tuple(values)
    if "files" in m:
        kw["files"] = tuple(_read_files(r, m["files"], locs))
    if "compression" in m:
        kw["compression"] = r.enum(m["compression"], "compression", Compression)
    if (
        "compression_level" in m
        and (level := r.scalar(m["compression_level"], "compression_level", int)) is not None
    ):
        # the range is the compressor's; an unknown compressor is reported already and has none
        comp = kw["compression"] if "compression" in m else Profile.compression
        if comp is not None:
            kw["compression_level"] = r.checked(
                m["compression_level"], "compression_level", level, lambda v: _check_level(comp, v)
            )
    if "early_microcode" in m:
        kw["early_microcode"] = r.scalar(m["early_microcode"], "early_microcode", bool)
    if "cmdline" in m and (cmdline := r.scalar(m["cmdline"], "cmdline", str)) is not None:
        kw["cmdline"] = r.checked(m["cmdline"], "cmdline", cmdline, _check_cmdline)
    if "panic" in m:
        kw["panic"] = r.enum(m["panic"], "panic", Panic)
    if "output" in m:
        om = r.mapping(m["output"], "output", ("dir",))
        if "dir" in om and (out_dir := r.scalar(om["dir"], "output.dir", str)) is not None:
            kw["output_dir"] = r.checked(om["dir"], "output.dir", out_dir, _check_nonempty)
    if "stage2" in m:
        kw["stage2"] = _read_stage2(r, m["stage2"], locs)
    if "overlay" in m:
        kw["overlay"] = _read_overlay(r, m["overlay"], locs)
    if "uki" in m:
        kw["uki"] = _read_uki(r, m["uki"], locs)
    _check_verity(r, kw, locs)
    r.raise_if_errors()
    return Profile(locations=locs, **{k: v for k, v in kw.items() if v is not None})


def _read_files(r: yamlread.Reader, node: yaml.Node, locs: dict[str, Location]) -> list[FileSpec]:
    out = []
    for i, item in enumerate(r.seq(node, "files") or []):
        key = f"files[{i}]"
        mode: int | None = None
        optional = False
        if isinstance(item, yaml.ScalarNode):
            source = dest = r.scalar(item, key, str)
        else:
            fm = r.mapping(item, key, FILE_KEYS, required=("source",))
            source = r.scalar(fm["source"], f"{key}.source", str) if "source" in fm else None
            dest = r.scalar(fm["dest"], f"{key}.dest", str) if "dest" in fm else source
            if "mode" in fm:
                mode = r.mode(fm["mode"], f"{key}.mode")
            if "optional" in fm:
                optional = bool(r.scalar(fm["optional"], f"{key}.optional", bool))
        if source is None or dest is None:
            continue
        if not source.startswith("/"):
            r.error(item, key, f"source '{source}' must be an absolute path inside the sysroot")
            continue
        try:
            dest = check_dest(dest)
        except PathError as e:
            r.error(item, key, str(e))
            continue
        locs[key] = r.loc(item)
        out.append(FileSpec(source, dest, mode, optional))
    return out


def _read_stage2(r: yamlread.Reader, node: yaml.Node, locs: dict[str, Location]) -> Stage2Spec:
    sm = r.mapping(node, "stage2", STAGE2_KEYS)
    kw: dict[str, Any] = {}
    if "compression" in sm:
        kw["compression"] = r.enum(sm["compression"], "stage2.compression", Stage2Compression)
    if "level" in sm and (n := r.scalar(sm["level"], "stage2.level", int)) is not None:
        kw["level"] = r.checked(
            sm["level"], "stage2.level", n, lambda x: None if 1 <= x <= 12 else "must be 1..12"
        )
    if (
        "pcluster_size" in sm
        and (n := r.scalar(sm["pcluster_size"], "stage2.pcluster_size", int)) is not None
    ):
        kw["pcluster_size"] = r.checked(sm["pcluster_size"], "stage2.pcluster_size", n, _check_pcluster)
    for k in ("all_drivers", "firmware", "verity"):
        if k in sm and (b := r.scalar(sm[k], f"stage2.{k}", bool)) is not None:
            kw[k] = b
    if "verity_salt" in sm and (salt := r.scalar(sm["verity_salt"], "stage2.verity_salt", str)) is not None:
        key = "stage2.verity_salt"
        try:
            kw["verity_salt"] = r.checked(sm["verity_salt"], key, bytes.fromhex(salt), _check_salt)
        except ValueError:
            r.error(sm["verity_salt"], key, f"'{salt}' is not hexadecimal (such as 'a1b2c3')")
    for k, vnode in sm.items():
        locs[f"stage2.{k}"] = r.loc(vnode)
    return Stage2Spec(**{k: v for k, v in kw.items() if v is not None})


def _read_overlay(r: yamlread.Reader, node: yaml.Node, locs: dict[str, Location]) -> OverlaySpec:
    om = r.mapping(node, "overlay", OVERLAY_KEYS)
    kw: dict[str, Any] = {}
    for k in ("bootfs", "bootfs_hint", "bootfstype", "fs", "fstype"):
        if k in om and (v := r.scalar(om[k], f"overlay.{k}", str)) is not None:
            kw[k] = v
    if "bootfs" in kw and kw["bootfs"] != AUTO and not kw["bootfs"].startswith(BOOTFS_PREFIXES):
        r.error(
            om["bootfs"],
            "overlay.bootfs",
            f"'{kw['bootfs']}' is not auto, UUID=, LABEL=, PARTUUID=, PARTLABEL= or /dev/...",
        )
    if kw.get("fs") and kw["fs"] != AUTO:
        try:
            check_dest(kw["fs"])
        except PathError as e:
            r.error(om["fs"], "overlay.fs", str(e))
    if "timeout" in om and (n := r.scalar(om["timeout"], "overlay.timeout", int)) is not None:
        kw["timeout"] = r.checked(
            om["timeout"], "overlay.timeout", n, lambda x: None if 1 <= x <= 3600 else "must be 1..3600 s"
        )
    if "attach" in om:
        kw["attach"] = r.enum(om["attach"], "overlay.attach", Attach)
    for k, vnode in om.items():
        locs[f"overlay.{k}"] = r.loc(vnode)
    for k in ("bootfs", "bootfstype", "fstype"):
        if k in kw and not kw[k]:
            r.error(om[k], f"overlay.{k}", "must not be empty")
    return OverlaySpec(**{k: v for k, v in kw.items() if v is not None})


def _read_hostonly(r: yamlread.Reader, node: yaml.Node) -> HostOnly | None:
    """yes/no/auto; YAML 1.1 reads unquoted yes and no as booleans: both spellings mean the same."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        value = r.scalar(node, "hostonly", bool)
        return None if value is None else HostOnly.YES if value else HostOnly.NO
    return r.enum(node, "hostonly", HostOnly)


def _read_uki(r: yamlread.Reader, node: yaml.Node, locs: dict[str, Location]) -> UkiSpec:
    um = r.mapping(node, "uki", UKI_KEYS)
    kw: dict[str, Any] = {}
    if "enabled" in um:
        kw["enabled"] = r.scalar(um["enabled"], "uki.enabled", bool)
    for k in ("stub", "key", "cert"):
        if k in um and (v := r.scalar(um[k], f"uki.{k}", str)) is not None:
            kw[k] = r.checked(um[k], f"uki.{k}", v, _check_nonempty)
    if "cmdline" in um and (cmdline := r.scalar(um["cmdline"], "uki.cmdline", str)) is not None:
        kw["cmdline"] = r.checked(um["cmdline"], "uki.cmdline", cmdline, _check_uki_cmdline)
    if "stub" in kw and kw["stub"] and not kw["stub"].startswith("/"):
        r.error(um["stub"], "uki.stub", f"'{kw['stub']}' must be an absolute path inside the sysroot")
    for k, other in (("key", "cert"), ("cert", "key")):
        if k in um and other not in um:
            r.error(um[k], f"uki.{k}", f"signing needs both uki.key and uki.cert; uki.{other} is missing")
    for k, vnode in um.items():
        locs[f"uki.{k}"] = r.loc(vnode)
    return UkiSpec(**{k: v for k, v in kw.items() if v is not None})


def _check_verity(r: yamlread.Reader, kw: dict[str, Any], locs: dict[str, Location]) -> None:
    """Cross-field checks of stage2.verity: it protects a stage-two image that stage one opens."""
    stage2 = kw.get("stage2")
    if not isinstance(stage2, Stage2Spec) or not stage2.verity:
        return
    if (kw.get("mode") or Profile.mode) is Mode.PLAIN:
        r.errors.append(
            ConfigError(
                "stage2.verity: mode: plain has no stage two to verify",
                location=locs.get("stage2.verity"),
                hint="use mode: initoverlayfs",
            )
        )
    overlay = kw.get("overlay")
    if isinstance(overlay, OverlaySpec) and overlay.attach is Attach.FILE:
        r.errors.append(
            ConfigError(
                "overlay.attach: file cannot be verified (stage2.verity): dm-verity needs a block device",
                location=locs.get("overlay.attach"),
                hint="use overlay.attach: auto or loop (with stage2.verity, auto attaches a loop device)",
            )
        )


def _check_salt(v: bytes) -> str | None:
    return f"{len(v)} bytes is too long (at most {VERITY_SALT_MAX})" if len(v) > VERITY_SALT_MAX else None


def _check_uki_cmdline(v: str) -> str | None:
    return "must be one line without NUL bytes" if "\n" in v or "\0" in v else None


def _check_kver(v: str) -> str | None:
    if v == "auto" or (v and "/" not in v and not v.startswith(".") and " " not in v):
        return None
    return f"'{v}' is not a kernel version (such as 6.1.0-28-cloud-amd64) or 'auto'"


def _check_name(v: str) -> str | None:
    if not v or "\0" in v or v.strip() != v or "\n" in v:
        return f"'{v}' is not a valid name"
    if ".." in v.split("/"):
        return f"'{v}' escapes the root ('..' is not allowed)"
    return None


def _check_nonempty(v: str) -> str | None:
    return "must not be empty" if not v.strip() else None


def _check_level(compression: Compression, v: int) -> str | None:
    """The levels the cpio writer accepts for `compression` (formats/compress.py), checked at load time."""
    if compression is Compression.NONE:
        return None if v == 0 else f"compression 'none' takes no level (got {v})"
    levels = compression.levels
    if v in levels:
        return None
    return f"{v} is out of range for {compression} ({levels.start}-{levels.stop - 1})"


def _check_pcluster(v: int) -> str | None:
    if v % 4096 or not 4096 <= v <= 1 << 20:
        return f"{v} must be a multiple of 4096 between 4096 and 1048576"
    return None


def _check_cmdline(v: str) -> str | None:
    return "must be one line" if "\n" in v else None


def profile_keys_help() -> str:
    width = max(map(len, PROFILE_KEYS))
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in PROFILE_KEYS.items())


assert {f.name for f in fields(Profile)} >= {"mode", "kernel", "sysroot", "stage2", "overlay"}
