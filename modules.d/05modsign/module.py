"""Module signature checks: load the accelerated hash first.

A kernel with CONFIG_MODULE_SIG hashes the whole of every signed module it loads before checking the
signature, with the best implementation of the hash registered at that moment. At boot that is the
built-in generic C code, and the hash is most of an insmod's cost: measured under QEMU (TCG,
Linux 6.1), erofs.ko loads in 38 ms signed and 8 ms unsigned. Loading the CPU-specific implementation
(sha256_ssse3: SSSE3/AVX/AVX2/SHA-NI) first makes every later check cheaper; /init loads it only when
the CPU modalias names a feature it needs, and a failure there is only a warning.
"""

from initbuild.modules import Check


def _providers(kmods):
    algo = kmods.signature_hash()
    return algo, (kmods.crypto_providers(algo) if algo else [])


def check(ctx):
    algo, providers = _providers(ctx.kmods)
    if algo is None:
        return Check.UNAVAILABLE, "the kernel's modules are not signed (or their digest is unknown)"
    if not providers:
        return Check.UNAVAILABLE, f"no loadable accelerated {algo} module (only the built-in one)"
    return Check.INCLUDE, f"modules are signed with {algo}; {', '.join(providers)} loads first"


def install(ctx):
    _, providers = _providers(ctx.kmods)
    for name in providers:
        ctx.add_driver(name, optional=True, first=True)
