/*
 * Stands in for a kernel module in tests/test_kmod.py: only the .modinfo section matters, which the
 * kernel's MODULE_FIRMWARE()/MODULE_LICENSE() fill with NUL-terminated "key=value" strings.
 * Built at test time with: gcc -c -o fwmod.ko fakemod.c
 */
#define MODINFO(id, text) \
	static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = text

MODINFO(modinfo_fw1, "firmware=a.bin");
MODINFO(modinfo_license, "license=GPL");
MODINFO(modinfo_fw2, "firmware=dir/b.bin");
MODINFO(modinfo_fw3, "firmware=missing.bin");
