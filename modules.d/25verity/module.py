"""dm-verity for stage two: stage one sets up a verity target over the stage-two image before mounting it.

The build appends the hash tree to stage two (formats/verity.py) and renders its parameters, root hash
included, into stage one's /etc/initbuild/verity.conf (build.collect_stage_one: stage one is collected
after stage two is written). Stage one sends the three device-mapper requests with initbuild's own
254-byte program (formats/dmprog.py) instead of dmsetup, whose libraries would add 4.4 MB to a stage
one that otherwise holds a static busybox: the requests are written here, and /init appends the
table's parameters, which name the loop device, at boot.
"""

from initbuild.errors import ConfigError
from initbuild.formats import dmprog, mountprog
from initbuild.modules import Check

DM_IOCTL = "/usr/lib/initbuild/dm-ioctl"  # keep in sync with IB_DM_IOCTL in templates/initlib.sh
DM_REQUESTS = "/usr/lib/initbuild/dm"
DM_NAME = "initbuild-stage2"  # IB_DM_NAME
SECTOR = 512


def _machine(ctx):
    return mountprog.userspace_machine(ctx.sysroot, ctx.find_binary)


def check(ctx):
    if not ctx.profile.stage2.verity:
        return Check.UNAVAILABLE, "stage2.verity is off"
    machine = _machine(ctx)
    if machine != mountprog.EM_X86_64:
        # never a silently unverified stage two: stage2.verity that cannot be honoured stops the build
        name = mountprog.MACHINE_NAMES.get(machine, "unknown") if machine is not None else "unknown"
        raise ConfigError(
            f"stage2.verity: the device-mapper program is x86-64 only (stage one's userspace: {name})",
            location=ctx.profile.where("stage2.verity"),
        )
    return Check.INCLUDE, "stage2.verity: stage one opens stage two through dm-verity"


def install(ctx):
    v = ctx.context["verity"]
    ctx.add_data(DM_IOCTL, dmprog.build(), mode=0o755, why="device-mapper requests (formats/dmprog.py)")
    sectors = v["data_blocks"] * v["data_block_size"] // SECTOR
    for name, data in dmprog.requests(DM_NAME, sectors).items():
        ctx.add_data(f"{DM_REQUESTS}/{name}", data, why=f"dm ioctl request: {name}")
