"""A tiny static ELF program that calls mount(2) once: stage one's file-backed EROFS mount.

Since Linux 6.12 (CONFIG_EROFS_FS_BACKED_BY_FILE=y) EROFS mounts straight from a regular file: when
the mount source is not a block device, fs/erofs/super.c erofs_fc_get_tree() falls back from
get_tree_bdev() to filp_open() of the source path. No loop device is needed. busybox `mount` cannot
ask for that: util-linux/mount.c singlemount() stat()s the source and, for any S_ISREG file (unless
remounting, binding or moving), sets up a loop device first, so without the loop driver it fails with
"can't setup loop device". util-linux 2.38's mount (Debian 12) also mounts a regular file through a
loop device; klibc's `mount` calls mount(2) directly but costs ~85 KB (the program plus the klibc
shared object) and reports errors only as text.

So initbuild writes the program itself: an ELF header, one PT_LOAD program header and 55 bytes of
hand-assembled x86-64 code, 175 bytes in all, byte-identical on every build, no compiler, no libc:

    mount-file SOURCE TARGET FSTYPE [DATA]

calls mount(SOURCE, TARGET, FSTYPE, MS_RDONLY, DATA or NULL) through the raw system call and exits
with status 0 on success, the positive errno on failure (so a shell can name the error: ENOTBLK,
ENODEV, ...), or 255 when fewer than three arguments are given (no errno is 255). The mount is
always read-only: it is meant for stage two's EROFS image.

Only x86-64 is written (`build()` raises UnsupportedArch otherwise); callers fall back to a loop
device for other architectures.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import astuple, dataclass

from ..errors import InitbuildError
from ..sysroot import Sysroot

# -- ELF constants (include/uapi/linux/elf.h, System V gABI) ------------------------------------
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
ET_EXEC = 2
EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
PT_LOAD = 1
PF_X = 1
PF_R = 4
EI_NIDENT = 16

# -- Linux x86-64 ABI (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/linux/mount.h) --------
SYS_MOUNT = 165
SYS_EXIT_GROUP = 231
MS_RDONLY = 1
USAGE_STATUS = 255  # exit status for a wrong argument count: no errno has this value

LOAD_ADDRESS = 0x400000  # the traditional x86-64 executable base: far above vm.mmap_min_addr
PAGE_SIZE = 0x1000

MACHINE_NAMES = {EM_386: "i386", EM_ARM: "arm", EM_X86_64: "x86-64", EM_AARCH64: "aarch64", EM_RISCV: "riscv"}


class UnsupportedArch(InitbuildError):
    """The mount program exists only for x86-64."""


@dataclass(frozen=True)
class Elf64_Ehdr:  # noqa: N801 - the ELF specification's name
    """The ELF file header (Elf64_Ehdr, 64 bytes)."""

    e_ident: bytes  # magic, class, data encoding, version, OS ABI, ABI version, padding (16 bytes)
    e_type: int  # Elf64_Half: object file type
    e_machine: int  # Elf64_Half: architecture
    e_version: int  # Elf64_Word: object file version
    e_entry: int  # Elf64_Addr: entry point virtual address
    e_phoff: int  # Elf64_Off: program header table file offset
    e_shoff: int  # Elf64_Off: section header table file offset (0: none)
    e_flags: int  # Elf64_Word: processor-specific flags
    e_ehsize: int  # Elf64_Half: this header's size
    e_phentsize: int  # Elf64_Half: program header entry size
    e_phnum: int  # Elf64_Half: program header entry count
    e_shentsize: int  # Elf64_Half: section header entry size
    e_shnum: int  # Elf64_Half: section header entry count
    e_shstrndx: int  # Elf64_Half: section name string table index (SHN_UNDEF: none)

    FORMAT = "<16sHHIQQQIHHHHHH"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, *astuple(self))


@dataclass(frozen=True)
class Elf64_Phdr:  # noqa: N801 - the ELF specification's name
    """One program header table entry (Elf64_Phdr, 56 bytes)."""

    p_type: int  # Elf64_Word: segment type
    p_flags: int  # Elf64_Word: segment permissions
    p_offset: int  # Elf64_Off: file offset of the segment
    p_vaddr: int  # Elf64_Addr: virtual address
    p_paddr: int  # Elf64_Addr: physical address (unused)
    p_filesz: int  # Elf64_Xword: bytes in the file
    p_memsz: int  # Elf64_Xword: bytes in memory
    p_align: int  # Elf64_Xword: alignment

    FORMAT = "<IIQQQQQQ"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, *astuple(self))


EHDR_SIZE = struct.calcsize(Elf64_Ehdr.FORMAT)
PHDR_SIZE = struct.calcsize(Elf64_Phdr.FORMAT)
assert EHDR_SIZE == 64 and PHDR_SIZE == 56
CODE_OFFSET = EHDR_SIZE + PHDR_SIZE  # the code follows the two headers in the one segment


@dataclass(frozen=True)
class Insn:
    """One instruction: its encoding, its Intel-syntax text (as `objdump -M intel` prints it) and why.
    A short jump has `target` (a label) and ends in a rel8 placeholder byte filled in by assemble();
    its `asm` holds "{target}", replaced by the target's address."""

    code: bytes
    asm: str
    comment: str
    label: str = ""  # a label naming this instruction's address
    target: str = ""  # the label a rel8 jump goes to


def _le32(value: int) -> bytes:
    """An imm32 operand, little-endian."""
    return struct.pack("<I", value)


# At the entry point the kernel's ELF loader leaves (System V x86-64 ABI, figure 3.9):
#   [rsp] = argc, [rsp+8] = argv[0], ..., [rsp+8*argc] = NULL (argv's terminator), then envp.
# A system call takes its number in rax and arguments in rdi, rsi, rdx, r10, r8, r9; it returns
# -errno (-4095..-1) or a result in rax and clobbers rcx and r11.
PROGRAM: tuple[Insn, ...] = (
    Insn(b"\x59", "pop rcx", "rcx = argc; rsp now points at argv[0]", label="_start"),
    Insn(b"\xbf" + _le32(USAGE_STATUS), f"mov edi,{USAGE_STATUS:#x}", "status if too few arguments"),
    Insn(b"\x83\xf9\x04", "cmp ecx,0x4", "argv[0] SOURCE TARGET FSTYPE at least?"),
    Insn(b"\x72\x00", "jb {target}", "no: exit(255)", target="exit"),
    Insn(b"\x48\x8b\x7c\x24\x08", "mov rdi,QWORD PTR [rsp+0x8]", "source = argv[1]"),
    Insn(b"\x48\x8b\x74\x24\x10", "mov rsi,QWORD PTR [rsp+0x10]", "target = argv[2]"),
    Insn(b"\x48\x8b\x54\x24\x18", "mov rdx,QWORD PTR [rsp+0x18]", "filesystemtype = argv[3]"),
    Insn(b"\x4c\x8b\x44\x24\x20", "mov r8,QWORD PTR [rsp+0x20]", "data = argv[4] (NULL if argc == 4)"),
    Insn(b"\x41\xba" + _le32(MS_RDONLY), f"mov r10d,{MS_RDONLY:#x}", "mountflags = MS_RDONLY (4th arg: r10)"),
    Insn(b"\xb8" + _le32(SYS_MOUNT), f"mov eax,{SYS_MOUNT:#x}", "SYS_mount"),
    Insn(b"\x0f\x05", "syscall", "mount(2): eax = 0 or -errno"),
    Insn(b"\x89\xc7", "mov edi,eax", "status = the result"),
    Insn(b"\xf7\xdf", "neg edi", "status = 0 or errno"),
    Insn(b"\xb8" + _le32(SYS_EXIT_GROUP), f"mov eax,{SYS_EXIT_GROUP:#x}", "SYS_exit_group", label="exit"),
    Insn(b"\x0f\x05", "syscall", "exit_group(status): does not return"),
)


# -- pivot-root: leave an overlay root for the real one and detach the old root ------------------
#
#     pivot-root NEWROOT
#
# chdir(NEWROOT); pivot_root(".", "."); umount2(".", MNT_DETACH), what systemd's switch-root does when
# / is not the initramfs (pivot_root(2), NOTES: "new_root and put_old may be the same directory"): the
# old root is stacked on the new one, and the lazy umount of "." detaches it with every mount below
# it. The kernel moves the root and working directory of every process that had the old root (the
# calling shell, PID 1, included) to NEWROOT. Once nothing uses the old root any more it is freed: the
# overlay, its EROFS lower, the loop device (autoclear) and the image file's hold on the bootfs.
# Exit status: 0; the errno when chdir or pivot_root failed (nothing changed); 128 + the errno when
# only the umount failed (the new root is in place, the old one stays mounted); 255 without NEWROOT.
SYS_CHDIR = 80
SYS_PIVOT_ROOT = 155
SYS_UMOUNT2 = 166
MNT_DETACH = 2
UMOUNT_FAILED = 0x80  # added to the errno of a failed umount2

PIVOT_PROGRAM: tuple[Insn, ...] = (
    Insn(b"\x59", "pop rcx", "rcx = argc; rsp now points at argv[0]", label="_start"),
    Insn(b"\xbf" + _le32(USAGE_STATUS), f"mov edi,{USAGE_STATUS:#x}", "status if NEWROOT is missing"),
    Insn(b"\x83\xf9\x02", "cmp ecx,0x2", "argv[0] NEWROOT at least?"),
    Insn(b"\x72\x00", "jb {target}", "no: exit(255)", target="exit"),
    Insn(b"\x48\x8b\x7c\x24\x08", "mov rdi,QWORD PTR [rsp+0x8]", "path = argv[1]"),
    Insn(b"\xb8" + _le32(SYS_CHDIR), f"mov eax,{SYS_CHDIR:#x}", "SYS_chdir"),
    Insn(b"\x0f\x05", "syscall", "chdir(NEWROOT)"),
    Insn(b"\x85\xc0", "test eax,eax", "failed?"),
    Insn(b"\x75\x00", "jne {target}", "yes: exit(errno)", target="fail"),
    Insn(b"\x6a\x2e", "push 0x2e", 'the string "." (2e 00 ...) on the stack'),
    Insn(b"\x48\x89\xe7", "mov rdi,rsp", 'new_root = "."'),
    Insn(b"\x48\x89\xe6", "mov rsi,rsp", 'put_old = "."'),
    Insn(b"\xb8" + _le32(SYS_PIVOT_ROOT), f"mov eax,{SYS_PIVOT_ROOT:#x}", "SYS_pivot_root"),
    Insn(b"\x0f\x05", "syscall", 'pivot_root(".", "."): the old root now sits on top of the new one'),
    Insn(b"\x85\xc0", "test eax,eax", "failed?"),
    Insn(b"\x75\x00", "jne {target}", "yes: exit(errno)", target="fail"),
    Insn(b"\x48\x89\xe7", "mov rdi,rsp", 'target = "." (resolves to the old root, on top)'),
    Insn(b"\xbe" + _le32(MNT_DETACH), f"mov esi,{MNT_DETACH:#x}", "flags = MNT_DETACH"),
    Insn(b"\xb8" + _le32(SYS_UMOUNT2), f"mov eax,{SYS_UMOUNT2:#x}", "SYS_umount2"),
    Insn(b"\x0f\x05", "syscall", 'umount2(".", MNT_DETACH): eax = 0 or -errno'),
    Insn(b"\x89\xc7", "mov edi,eax", "status = the result"),
    Insn(b"\xf7\xdf", "neg edi", "status = 0 or errno"),
    Insn(b"\x74\x00", "je {target}", "0: exit(0)", target="exit"),
    Insn(b"\x81\xcf" + _le32(UMOUNT_FAILED), f"or edi,{UMOUNT_FAILED:#x}", "status = 128 + errno"),
    Insn(b"\xeb\x00", "jmp {target}", "exit(status)", target="exit"),
    Insn(b"\x89\xc7", "mov edi,eax", "status = -errno", label="fail"),
    Insn(b"\xf7\xdf", "neg edi", "status = errno"),
    Insn(b"\xb8" + _le32(SYS_EXIT_GROUP), f"mov eax,{SYS_EXIT_GROUP:#x}", "SYS_exit_group", label="exit"),
    Insn(b"\x0f\x05", "syscall", "exit_group(status): does not return"),
)


@dataclass(frozen=True)
class Line:
    """An assembled instruction: virtual address, bytes, Intel syntax, comment."""

    address: int
    code: bytes
    asm: str
    comment: str


def assemble(program: tuple[Insn, ...] = PROGRAM, base: int = LOAD_ADDRESS + CODE_OFFSET) -> list[Line]:
    """Place the instructions at `base`, resolve the labels and fill in the rel8 jump offsets."""
    labels: dict[str, int] = {}
    addr = base
    for insn in program:
        if insn.label:
            assert insn.label not in labels, f"label {insn.label} defined twice"
            labels[insn.label] = addr
        addr += len(insn.code)
    out: list[Line] = []
    addr = base
    for insn in program:
        code, asm = insn.code, insn.asm
        if insn.target:
            dest = labels[insn.target]
            rel = dest - (addr + len(code))  # relative to the next instruction
            assert -128 <= rel <= 127, f"jump to {insn.target} out of rel8 range"
            code = code[:-1] + struct.pack("<b", rel)
            asm = asm.format(target=f"{dest:#x}")
        out.append(Line(addr, code, asm, insn.comment))
        addr += len(code)
    return out


def listing(lines: list[Line] | None = None) -> str:
    """The assembly listing beside the bytes, as a text block."""
    rows = []
    for ln in lines or assemble():
        rows.append(f"{ln.address:8x}:  {ln.code.hex(' '):<20} {ln.asm:<32} ; {ln.comment}")
    return "\n".join(rows) + "\n"


def build(machine: int = EM_X86_64, program: tuple[Insn, ...] = PROGRAM) -> bytes:
    """The complete ELF executable of `program` (mount-file, or PIVOT_PROGRAM) for `machine` (an
    e_machine value); only EM_X86_64 exists."""
    if machine != EM_X86_64:
        name = MACHINE_NAMES.get(machine, f"e_machine {machine}")
        what = "pivot-root" if program is PIVOT_PROGRAM else "the file-backed mount program"
        raise UnsupportedArch(
            f"{what} is written for x86-64 only, not {name}",
            hint="attach the stage-two image through a loop device (overlay.attach: loop)",
        )
    return executable(b"".join(ln.code for ln in assemble(program)))


def executable(code: bytes) -> bytes:
    """A static x86-64 ELF executable: the headers, then `code`, entered at its first byte."""
    size = CODE_OFFSET + len(code)
    ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, 0])
    ehdr = Elf64_Ehdr(
        e_ident=ident.ljust(EI_NIDENT, b"\0"),
        e_type=ET_EXEC,
        e_machine=EM_X86_64,
        e_version=EV_CURRENT,
        e_entry=LOAD_ADDRESS + CODE_OFFSET,
        e_phoff=EHDR_SIZE,
        e_shoff=0,
        e_flags=0,
        e_ehsize=EHDR_SIZE,
        e_phentsize=PHDR_SIZE,
        e_phnum=1,
        e_shentsize=0,
        e_shnum=0,
        e_shstrndx=0,
    )
    # One read+execute segment maps the whole file (headers included) at LOAD_ADDRESS. No
    # PT_INTERP, no PT_DYNAMIC: the kernel jumps straight to e_entry. No writable data, no bss.
    phdr = Elf64_Phdr(
        p_type=PT_LOAD,
        p_flags=PF_R | PF_X,
        p_offset=0,
        p_vaddr=LOAD_ADDRESS,
        p_paddr=LOAD_ADDRESS,
        p_filesz=size,
        p_memsz=size,
        p_align=PAGE_SIZE,
    )
    out = ehdr.pack() + phdr.pack() + code
    assert len(out) == size
    return out


def elf_machine(header: bytes) -> int | None:
    """e_machine of an ELF file given its first bytes (at least 20), or None if it is not ELF."""
    if len(header) < 20 or header[:4] != ELFMAG:
        return None
    fmt = "<H" if header[5] == ELFDATA2LSB else ">H"
    machine: int = struct.unpack_from(fmt, header, 18)[0]
    return machine


def userspace_machine(sysroot: Sysroot, find_binary: Callable[[str], str | None]) -> int | None:
    """e_machine of the userspace stage one runs (its busybox, else its sh), or None if unknown:
    the tiny programs initbuild writes (mount-file, dm-ioctl) must match it."""
    for name in ("busybox", "sh"):
        path = find_binary(name)
        if path is not None:
            with sysroot.open(path) as f:
                return elf_machine(f.read(20))
    return None


if __name__ == "__main__":  # pragma: no cover - print the listing
    print(listing(), end="")
