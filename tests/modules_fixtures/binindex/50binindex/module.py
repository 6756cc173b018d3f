"""Test fixture: ask for depmod's modules.*.bin, so kmod's modprobe works inside stage two."""


def install(ctx):
    ctx.want_binary_module_indexes()
