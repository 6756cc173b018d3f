"""A tiny static ELF program that sends one device-mapper ioctl: how stage one sets up dm-verity.

Stage one needs three device-mapper requests to put a verity target over the stage-two image:
DM_DEV_CREATE (a device named initbuild-stage2), DM_TABLE_LOAD (the verity table) and
DM_DEV_SUSPEND without DM_SUSPEND_FLAG (resume: make the table live). `dmsetup` sends them, but it
brings libdevmapper, libselinux, libudev, libpcre2, libm and glibc (4.4 MB, measured on Debian 12)
into a stage one that otherwise holds only a static busybox, and `veritysetup` brings more. Busybox
has no dmsetup. The kernel's `dm-mod.create=` would need no userspace at all, but Debian's kernels
lack CONFIG_DM_INIT.

So, like mountprog.py, initbuild writes the program itself, with no compiler and no libc:

    dm-ioctl REQUEST-FILE

reads REQUEST-FILE (at most 16383 bytes) onto the stack, NUL-terminates it, opens
/dev/mapper/control and calls ioctl(fd, request, &struct dm_ioctl). The file is

    [u32 ioctl request number][u32 0][struct dm_ioctl][dm_target_spec + params text, for a table]

The build writes the binary part of each request (`requests()`); for DM_TABLE_LOAD stage one appends
the verity parameters as text, because the loop device is known only at boot. The program sets
dm_ioctl.data_size to what it read (plus the NUL), so the parameter string needs no length field.
It exits with 0, the errno of the failed open(2)/read(2)/ioctl(2), or 255 for a wrong argument
count, like mount-file, so the shell can name the error.

The structures are the kernel's (include/uapi/linux/dm-ioctl.h, interface version 4); the kernel
checks `version[0] == 4` and that the minor version (0 here) is not newer than its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .mountprog import (
    CODE_OFFSET,
    EM_X86_64,
    LOAD_ADDRESS,
    MACHINE_NAMES,
    SYS_EXIT_GROUP,
    USAGE_STATUS,
    Insn,
    Line,
    UnsupportedArch,
    assemble,
    executable,
)

# -- Linux x86-64 ABI ---------------------------------------------------------------------------
SYS_READ = 0
SYS_OPEN = 2
SYS_IOCTL = 16
O_RDONLY = 0
O_RDWR = 2
BUFFER = 0x4000  # bytes of stack for the request; one byte is kept for the terminating NUL
CONTROL = b"/dev/mapper/control\0"  # the misc device dm-mod registers (devtmpfs creates it)

# -- include/uapi/linux/dm-ioctl.h --------------------------------------------------------------
DM_VERSION_MAJOR = 4
DM_IOCTL = 0xFD
DM_DEV_CREATE_CMD = 3
DM_DEV_SUSPEND_CMD = 6
DM_TABLE_LOAD_CMD = 9
DM_READONLY_FLAG = 1 << 0
DM_NAME_LEN = 128
DM_UUID_LEN = 129
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags, event_nr,
# padding, dev (u64), name[128], uuid[129], data[7]
DM_IOCTL_FORMAT = "<3IIIIiIIIQ128s129s7x"
DM_IOCTL_SIZE = struct.calcsize(DM_IOCTL_FORMAT)
DATA_SIZE_OFFSET = 12  # dm_ioctl.data_size, which the program fills in
# struct dm_target_spec: sector_start (u64), length (u64), status (s32), next (u32), target_type[16]
DM_TARGET_SPEC_FORMAT = "<QQiI16s"
DM_TARGET_SPEC_SIZE = struct.calcsize(DM_TARGET_SPEC_FORMAT)
REQUEST_HEADER = "<II"  # the file's own header: the ioctl request number, then padding to 8 bytes
assert DM_IOCTL_SIZE == 312 and DM_TARGET_SPEC_SIZE == 40 and struct.calcsize(REQUEST_HEADER) == 8


def _iowr(nr: int, size: int = DM_IOCTL_SIZE) -> int:
    """_IOWR(DM_IOCTL, nr, struct dm_ioctl) (include/uapi/asm-generic/ioctl.h)."""
    return (3 << 30) | (size << 16) | (DM_IOCTL << 8) | nr


DM_DEV_CREATE = _iowr(DM_DEV_CREATE_CMD)
DM_DEV_SUSPEND = _iowr(DM_DEV_SUSPEND_CMD)
DM_TABLE_LOAD = _iowr(DM_TABLE_LOAD_CMD)
assert DM_DEV_CREATE == 0xC138FD03


def _program(control: int) -> tuple[Insn, ...]:
    """The code, with `control` the address of the "/dev/mapper/control" string after it."""

    def imm(v: int) -> bytes:
        return struct.pack("<I", v)

    data_size = 8 + DATA_SIZE_OFFSET  # where dm_ioctl.data_size is in the buffer at rsp
    return (
        Insn(b"\x59", "pop rcx", "rcx = argc; rsp now points at argv[0]", label="_start"),
        Insn(b"\xbf" + imm(USAGE_STATUS), f"mov edi,{USAGE_STATUS:#x}", "status if not one argument"),
        Insn(b"\x83\xf9\x02", "cmp ecx,0x2", "argv[0] REQUEST-FILE?"),
        Insn(b"\x75\x00", "jne {target}", "no: exit(255)", target="exit"),
        Insn(b"\x48\x8b\x7c\x24\x08", "mov rdi,QWORD PTR [rsp+0x8]", "pathname = argv[1]"),
        Insn(b"\x31\xf6", "xor esi,esi", "flags = O_RDONLY"),
        Insn(b"\xb8" + imm(SYS_OPEN), f"mov eax,{SYS_OPEN:#x}", "SYS_open"),
        Insn(b"\x0f\x05", "syscall", "open(2): eax = fd or -errno"),
        Insn(b"\x85\xc0", "test eax,eax", "failed?"),
        Insn(b"\x78\x00", "js {target}", "yes: exit(errno)", target="fail"),
        Insn(b"\x48\x81\xec" + imm(BUFFER), f"sub rsp,{BUFFER:#x}", "the request buffer, on the stack"),
        Insn(b"\x89\xc7", "mov edi,eax", "fd"),
        Insn(b"\x48\x89\xe6", "mov rsi,rsp", "buf"),
        Insn(b"\xba" + imm(BUFFER - 1), f"mov edx,{BUFFER - 1:#x}", "count: room for a NUL"),
        Insn(b"\x31\xc0", "xor eax,eax", "SYS_read"),
        Insn(b"\x0f\x05", "syscall", "read(2): eax = bytes read or -errno"),
        Insn(b"\x85\xc0", "test eax,eax", "failed?"),
        Insn(b"\x78\x00", "js {target}", "yes: exit(errno)", target="fail"),
        Insn(b"\xc6\x04\x04\x00", "mov BYTE PTR [rsp+rax*1],0x0", "NUL-terminate the params text"),
        Insn(b"\x83\xe8\x07", "sub eax,0x7", "size - 8-byte header + the NUL"),
        Insn(
            b"\x89\x44\x24" + bytes([data_size]),
            f"mov DWORD PTR [rsp+{data_size:#x}],eax",
            "dm_ioctl.data_size",
        ),
        Insn(b"\xbf" + imm(control), f"mov edi,{control:#x}", 'pathname = "/dev/mapper/control"'),
        Insn(b"\xbe" + imm(O_RDWR), f"mov esi,{O_RDWR:#x}", "flags = O_RDWR"),
        Insn(b"\xb8" + imm(SYS_OPEN), f"mov eax,{SYS_OPEN:#x}", "SYS_open"),
        Insn(b"\x0f\x05", "syscall", "open(2): eax = fd or -errno"),
        Insn(b"\x85\xc0", "test eax,eax", "failed?"),
        Insn(b"\x78\x00", "js {target}", "yes: exit(errno)", target="fail"),
        Insn(b"\x89\xc7", "mov edi,eax", "fd"),
        Insn(b"\x8b\x34\x24", "mov esi,DWORD PTR [rsp]", "request = the file's first word"),
        Insn(b"\x48\x8d\x54\x24\x08", "lea rdx,[rsp+0x8]", "argp = the struct dm_ioctl"),
        Insn(b"\xb8" + imm(SYS_IOCTL), f"mov eax,{SYS_IOCTL:#x}", "SYS_ioctl"),
        Insn(b"\x0f\x05", "syscall", "ioctl(2): eax = 0 or -errno"),
        Insn(b"\x89\xc7", "mov edi,eax", "status = the result", label="fail"),
        Insn(b"\xf7\xdf", "neg edi", "status = 0 or errno"),
        Insn(b"\xb8" + imm(SYS_EXIT_GROUP), f"mov eax,{SYS_EXIT_GROUP:#x}", "SYS_exit_group", label="exit"),
        Insn(b"\x0f\x05", "syscall", "exit_group(status): does not return"),
    )


BASE = LOAD_ADDRESS + CODE_OFFSET
CODE_SIZE = sum(len(i.code) for i in _program(0))
PROGRAM = _program(BASE + CODE_SIZE)  # the string follows the code


def lines() -> list[Line]:
    return assemble(PROGRAM, BASE)


def build(machine: int = EM_X86_64) -> bytes:
    """The complete ELF executable (x86-64 only, like mount-file)."""
    if machine != EM_X86_64:
        name = MACHINE_NAMES.get(machine, f"e_machine {machine}")
        raise UnsupportedArch(f"the device-mapper ioctl program is written for x86-64 only, not {name}")
    return executable(b"".join(ln.code for ln in lines()) + CONTROL)


# -- the requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmIoctl:
    """struct dm_ioctl as user space sends it; fields named as in dm-ioctl.h."""

    name: str
    flags: int = 0
    target_count: int = 0
    data_start: int = DM_IOCTL_SIZE  # where the payload (a dm_target_spec) starts

    def pack(self, data_size: int = DM_IOCTL_SIZE) -> bytes:
        name = self.name.encode()
        if not name or len(name) >= DM_NAME_LEN or "/" in self.name:
            raise ValueError(f"bad device-mapper name {self.name!r}")
        return struct.pack(
            DM_IOCTL_FORMAT, DM_VERSION_MAJOR, 0, 0, data_size, self.data_start, self.target_count,
            0, self.flags, 0, 0, 0, name, b"",
        )  # fmt: skip


def request(number: int, body: bytes) -> bytes:
    return struct.pack(REQUEST_HEADER, number, 0) + body


def requests(name: str, sectors: int, target: str = "verity") -> dict[str, bytes]:
    """The three request files: create, load (to be followed by the table's params text), resume."""
    spec = struct.pack(DM_TARGET_SPEC_FORMAT, 0, sectors, 0, 0, target.encode())
    return {
        "create": request(DM_DEV_CREATE, DmIoctl(name).pack()),
        "load": request(DM_TABLE_LOAD, DmIoctl(name, flags=DM_READONLY_FLAG, target_count=1).pack() + spec),
        "resume": request(DM_DEV_SUSPEND, DmIoctl(name).pack()),
    }


def listing() -> str:
    rows = [f"{ln.address:8x}:  {ln.code.hex(' '):<20} {ln.asm:<32} ; {ln.comment}" for ln in lines()]
    text = CONTROL.rstrip(bytes(1)).decode()
    rows.append(f"{BASE + CODE_SIZE:8x}:  .string {text!r}")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - print the listing
    print(listing(), end="")
