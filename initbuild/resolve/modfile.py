"""One kernel module file (.ko, .ko.xz, .ko.zst, .ko.gz): its `.modinfo` and its signature.

Nothing here knows about a module tree (kmod.py does): these read a single file, decompressed in
memory (Sysroot.read_decompressed) the way the kernel's own loader (kernel/module/decompress.c) or
kmod does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import ResolveError
from ..sysroot import Sysroot

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def read_modinfo(sysroot: Sysroot, path: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a module's .modinfo section, in section order."""
    data = sysroot.read_decompressed(path)
    if not data.startswith(b"\x7fELF"):
        raise ResolveError(f"kernel module {path} is not an ELF file")
    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        raw = section.data() if section is not None else b""
    except (ELFError, ValueError) as e:
        raise ResolveError(f"cannot parse kernel module {path}: {e}") from e
    out = []
    for rec in raw.split(b"\0"):
        key, sep, value = rec.decode("utf-8", errors="replace").partition("=")
        if sep:
            out.append((key, value))
    return out


# -- module signatures (include/linux/module_signature.h, scripts/sign-file.c) ---------------------

MODULE_SIG_STRING = b"~Module signature appended~\n"
MODULE_SIGNATURE_SIZE = 12  # struct module_signature: u8 algo, hash, id_type, signer_len, key_id_len,
# u8 __pad[3], __be32 sig_len
PKEY_ID_PKCS7 = 2
OID_PKCS7_SIGNED_DATA = "1.2.840.113549.1.7.2"
# Digest algorithm OIDs (include/linux/oid_registry.h) -> kernel crypto API hash names.
HASH_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
    "1.2.156.10197.1.401": "sm3",
}


@dataclass(frozen=True)
class ModuleSignature:
    """The signature appended to a module: its struct module_signature and the PKCS#7 digest."""

    id_type: int
    sig_len: int
    hash_algo: str | None  # the kernel crypto name of the PKCS#7 digest ("sha256"), None if unknown


def _der(buf: bytes, at: int) -> tuple[int, int, int]:
    """One DER header at `at`: (tag, content start, content end)."""
    if at + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, length = buf[at], buf[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4 or at + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[at : at + n], "big")
        at += n
    if at + length > len(buf):
        raise ValueError("DER value overruns its container")
    return tag, at, at + length


def _oid(raw: bytes) -> str:
    """Dotted form of a DER OBJECT IDENTIFIER's content (X.690 8.19: base-128 subidentifiers, the first
    one holding 40 * X + Y)."""
    subids, value = [], 0
    for b in raw:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            subids.append(value)
            value = 0
    if not subids:
        return ""
    x = min(subids[0] // 40, 2)
    return ".".join(map(str, [x, subids[0] - 40 * x, *subids[1:]]))


def pkcs7_digest_algo(der: bytes) -> str | None:
    """The digest algorithm of a PKCS#7 SignedData (RFC 2315: ContentInfo { contentType, [0] SignedData
    { version, digestAlgorithms SET OF AlgorithmIdentifier, ... } }), as a crypto API name."""
    try:
        tag, at, _ = _der(der, 0)  # ContentInfo SEQUENCE
        tag_oid, o0, o1 = _der(der, at)
        if tag != 0x30 or tag_oid != 0x06 or _oid(der[o0:o1]) != OID_PKCS7_SIGNED_DATA:
            return None
        tag, at, _ = _der(der, o1)  # [0] EXPLICIT
        tag_sd, at, _ = _der(der, at)  # SignedData SEQUENCE
        tag_v, _, at = _der(der, at)  # version INTEGER
        tag_set, at, _ = _der(der, at)  # digestAlgorithms SET
        tag_alg, at, _ = _der(der, at)  # AlgorithmIdentifier SEQUENCE
        tag_oid, o0, o1 = _der(der, at)
        if (tag, tag_sd, tag_v, tag_set, tag_alg, tag_oid) != (0xA0, 0x30, 0x02, 0x31, 0x30, 0x06):
            return None
        return HASH_OIDS.get(_oid(der[o0:o1]))
    except ValueError:
        return None


def module_signature(data: bytes) -> ModuleSignature | None:
    """The signature appended to a module's (decompressed) bytes, None when it is unsigned."""
    if not data.endswith(MODULE_SIG_STRING) or len(data) < len(MODULE_SIG_STRING) + MODULE_SIGNATURE_SIZE:
        return None
    end = len(data) - len(MODULE_SIG_STRING)
    ms = data[end - MODULE_SIGNATURE_SIZE : end]
    id_type, sig_len = ms[2], int.from_bytes(ms[8:12], "big")
    if sig_len > end - MODULE_SIGNATURE_SIZE:
        return None
    sig = data[end - MODULE_SIGNATURE_SIZE - sig_len : end - MODULE_SIGNATURE_SIZE]
    return ModuleSignature(id_type, sig_len, pkcs7_digest_algo(sig) if id_type == PKEY_ID_PKCS7 else None)
