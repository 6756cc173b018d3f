"""Build-time driver classification for on-demand loading at boot (collect.driver_table)."""

from __future__ import annotations

import fnmatch

from initbuild.collect import driver_table
from initbuild.kmod import KernelModules
from initbuild.sysroot import Sysroot


def test_driver_table_classifies_by_alias(kver: str) -> None:
    kmods = KernelModules(Sysroot("/"), kver)
    wanted = [(n, False) for n in ("virtio_pci", "virtio_blk", "erofs", "overlay", "loop")]
    wanted += [(n, True) for n in ("sd_mod", "vfat", "nls_cp437", "no_such_driver")]
    t = driver_table(kmods, wanted)
    hw = {m for _, m in t.hardware}
    assert hw == {"virtio_pci", "virtio_blk", "sd_mod"}
    assert dict(t.fs) == {"erofs": "erofs", "overlay": "overlay", "vfat": "vfat"}
    assert t.nls == ("nls_cp437",) and t.eager == ("loop",)
    # raw patterns, as sysfs prints modaliases: a SCSI disk and a virtio block device match
    assert any(fnmatch.fnmatchcase("scsi:t-0x00", p) for p, m in t.hardware if m == "sd_mod")
    assert any(
        fnmatch.fnmatchcase("virtio:d00000002v00001AF4", p) for p, m in t.hardware if m == "virtio_blk"
    )
    # every closure is in the global order, dependencies first, the module itself last
    order = [k.name for k in t.order]
    for name, deps in t.closure.items():
        assert deps[-1] == name
        assert [order.index(d) for d in deps] == sorted(order.index(d) for d in deps)
    assert t.closure["erofs"] == ("crc32c_intel", "libcrc32c", "erofs")
