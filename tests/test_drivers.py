"""Build-time driver classification for on-demand loading at boot (modules/drivers.py: driver_table)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from initbuild.modules.drivers import CPU_MODALIAS, driver_table
from initbuild.resolve.kmod import KernelModules
from initbuild.sysroot import Sysroot


def test_driver_table_classifies_by_alias(kver: str) -> None:
    kmods = KernelModules(Sysroot("/"), kver)
    wanted = [(n, False) for n in ("virtio_pci", "virtio_blk", "erofs", "overlay", "loop")]
    wanted += [(n, True) for n in ("sd_mod", "vfat", "nls_cp437", "no_such_driver")]
    t = driver_table(kmods, wanted)
    hw = {m for _, m in t.hardware}
    # a driver built into this kernel (6.12's virtio_pci) has nothing to load
    loadable = {n for n in ("virtio_pci", "virtio_blk", "sd_mod") if not kmods.lookup(n)[0].builtin}
    assert hw == loadable and {"virtio_blk", "sd_mod"} <= loadable
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


def test_first_drivers_lead_the_order_and_match_the_cpu(kver: str) -> None:
    """A `first` driver (the accelerated signature hash) is matched against the CPU modalias and its
    closure leads the load order; a CPU-feature driver asked for normally is scanned on the CPU."""
    kmods = KernelModules(Sysroot("/"), kver)
    algo = kmods.signature_hash()
    providers = kmods.crypto_providers(algo) if algo else []
    if not providers:
        pytest.skip("no accelerated module-signature hash for this kernel")
    wanted = [(n, False) for n in ("virtio_pci", "erofs")] + [(p, True) for p in providers]
    t = driver_table(kmods, wanted, first=providers)
    assert {m for _, m in t.first} == set(providers)
    assert all(p.startswith("cpu:") or p == "*" for p, _ in t.first)
    assert not {m for _, m in t.hardware} & set(providers) and not set(t.eager) & set(providers)
    lead = [k.name for k in t.order][: len(t.closure[providers[0]])]
    assert lead == list(t.closure[providers[0]])
    # the same driver asked for without `first` is hardware on the CPU "bus", scanned where it is
    t2 = driver_table(kmods, wanted)
    assert {m for p, m in t2.hardware if p.startswith("cpu:")} >= set(providers)
    assert CPU_MODALIAS in t2.to_context()["scan"]
    cpu = Path(CPU_MODALIAS)
    if cpu.exists() and "ssse3" in Path("/proc/cpuinfo").read_text():
        # this host's CPU modalias matches one of the patterns (as the shell's `case` will)
        alias = cpu.read_text().strip()
        assert any(fnmatch.fnmatchcase(alias, p) for p, _ in t.first)
