"""How stage one attaches a stage-two image that is a file on bootfs: a file-backed mount or a loop device.

Linux mounts EROFS straight from a regular file when built with CONFIG_EROFS_FS_BACKED_BY_FILE=y (6.12
on): no loop device, no loop driver. busybox `mount` cannot ask for that (it sets up a loop device for
any regular file), so the image then gets initbuild's own mount(2) program (formats/mountprog.py, a
175-byte static x86-64 ELF) and no `loop` driver. Otherwise (an older kernel, another architecture,
another fstype, or `overlay.attach: loop`) stage one gets the loop driver, as before.

The decision is written to initoverlayfs.conf's `attach` key (file, loop, or direct when stage two is
a whole device), and `/init` resolves `initbuild.attach=auto` the same way: `file` when the program is
in the image, `loop` otherwise. Under stage2.verity (modules.d/25verity) the image is always a block
device, `loop+verity` or `direct+verity`: dm-verity maps block devices, not files, also on 6.12.
"""

from initbuild import log
from initbuild.errors import ConfigError, InitbuildError
from initbuild.formats import mountprog
from initbuild.resolve.kconfig import kernel_features

MOUNT_FILE = "/usr/lib/initbuild/mount-file"  # keep in sync with IB_MOUNT_FILE in templates/initlib.sh


def _kernel_mounts_files(sysroot, kver):
    """(True/False, why): does the kernel mount EROFS from a regular file?"""
    try:
        f = kernel_features(sysroot, kver)
    except InitbuildError as e:  # a malformed config: no file-backed mounts, but say why
        return False, f"its configuration is unreadable: {e.message}"
    if f.config_source is None:
        return False, "no kernel configuration found"
    option = "CONFIG_EROFS_FS_BACKED_BY_FILE"
    return f.erofs_file_backed, f"{option}={'y' if f.erofs_file_backed else 'n'} in {f.config_source}"


def _machine(ctx):
    return mountprog.userspace_machine(ctx.sysroot, ctx.find_binary)


def decide(ctx):
    """(attach, mechanism, why). attach is the initoverlayfs.conf value: file, loop or direct.
    mechanism is what stage one ships for an image file: "file" (the mount program) or "loop" (the
    driver); a direct image gets it too, for a boot that names a file with initbuild.fs=."""
    ov = ctx.profile.overlay
    direct = not ov.fs or ov.attach == "direct"
    if ctx.profile.stage2.verity:  # modules.d/25verity: dm-verity maps a block device, never a file
        if direct:
            return "direct", "loop", "stage2.verity: dm-verity over the stage-two device"
        return "loop", "loop", "stage2.verity: dm-verity over a loop device, not a file-backed mount"
    if ov.attach == "loop":
        return "loop", "loop", "overlay.attach: loop"
    problems = []
    if ov.fstype != "erofs":
        problems.append(f"fstype {ov.fstype} is not erofs")
    mounts, why = _kernel_mounts_files(ctx.sysroot, ctx.kver)
    if not mounts:
        problems.append(f"kernel {ctx.kver} cannot mount EROFS from a file ({why})")
    machine = _machine(ctx)
    if machine != mountprog.EM_X86_64:
        name = mountprog.MACHINE_NAMES.get(machine, "unknown") if machine is not None else "unknown"
        problems.append(f"the mount program exists for x86-64 only (stage one's userspace: {name})")
    if problems:
        if ov.attach == "file":
            raise ConfigError(
                f"overlay.attach: file, but {'; '.join(problems)}",
                location=ctx.profile.where("overlay.attach"),
                hint="use overlay.attach: auto (a loop device when a file mount is impossible) or loop",
            )
        return ("direct" if direct else "loop"), "loop", "; ".join(problems)
    return ("direct" if direct else "file"), "file", f"kernel {ctx.kver} mounts EROFS from files ({why})"


def install(ctx):
    attach, mechanism, why = decide(ctx)
    tool = "the mount-file program, no loop driver" if mechanism == "file" else "the loop driver"
    log.verbose(f"stage two: attach {attach}, image files through {tool}: {why}")
    if mechanism == "file":
        ctx.add_data(MOUNT_FILE, mountprog.build(), mode=0o755, why="file-backed mount(2) of stage two")
    else:
        ctx.add_driver("loop", optional=True)
    # initoverlayfs.conf records what the build decided (rendered after install: see Collector.render);
    # "+verity": stage one maps that device through dm-verity (modules.d/25verity)
    verity = "+verity" if ctx.profile.stage2.verity else ""
    ctx.context["overlay"] = {**ctx.context["overlay"], "attach": attach + verity}
