"""Reference tools the tests compare against, named once: each compression's own CLI."""

from __future__ import annotations

from initbuild.formats.compress import Compression

COMPRESSED = [x for x in Compression if x is not Compression.NONE]

# decompress to stdout (and check integrity) with each format's own tool
CLI_DECOMPRESS = {
    Compression.GZIP: ["gzip", "-dc"],
    Compression.XZ: ["xz", "-dc"],
    Compression.ZSTD: ["zstd", "-dcq"],
    Compression.LZ4: ["lz4", "-dc"],
}
