"""The newc cpio format of an initramfs: newc.py (the header), writer.py, reader.py."""
