"""Test fixture: stage two is told to hand over to an init that does not exist."""


def install(ctx):
    ctx.add_data("/etc/initbuild/stage2-init", "/usr/lib/nothing/init\n")
