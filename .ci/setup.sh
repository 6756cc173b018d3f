#!/usr/bin/env bash
# Everything initbuild needs on a fresh Debian bookworm machine (as root, or with sudo):
# the two kernels to build from and boot (Debian's cloud 6.1, and 6.12 with file-backed EROFS
# and .ko.xz modules), QEMU, busybox, e2fsprogs, the test oracles (erofs-utils, cpio, lz4, zstd,
# xz, shellcheck, binutils' readelf/objdump), kmod (depmod, modprobe) and udev (the udev module
# and its boot test), mmdebstrap with Debian's archive keyring (the real Debian root of
# qemu/realroot.py and tests/vm/test_realroot.py; uidmap for its rootless unshare mode), and a
# virtualenv with the package, its test extras and the linters.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    qemu-system-x86 linux-image-cloud-amd64 linux-image-6.12-cloud-amd64 initramfs-tools \
    busybox-static e2fsprogs erofs-utils cpio lz4 zstd xz-utils gzip shellcheck kmod udev binutils \
    cryptsetup-bin ovmf systemd-boot-efi sbsigntool python3 python3-venv python3-pip \
    mmdebstrap debian-archive-keyring gpg uidmap

# Debian's python refuses system-wide pip installs (PEP 668): use a project virtualenv.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup done: $(.venv/bin/python --version), kernel(s): $(ls /lib/modules | tr '\n' ' ')"
