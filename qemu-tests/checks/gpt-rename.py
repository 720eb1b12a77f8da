#!/usr/bin/env python3
"""Renames a GPT partition in a raw disk image, in the primary and the backup table (CRCs
fixed), as if the disk with that partition were gone: kimg finds STATE by its name.
    checks/gpt-rename.py DISK OLD_NAME NEW_NAME
Assumes 512-byte sectors (what `kimg build` writes)."""
import struct
import sys
import zlib

SECTOR = 512
path, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
if len(new) > 36:
    sys.exit("a GPT partition name has at most 36 UTF-16 units")


def fix(f, header_lba):
    f.seek(header_lba * SECTOR)
    header = bytearray(f.read(SECTOR))
    if header[:8] != b"EFI PART":
        sys.exit(f"{path}: no GPT header at LBA {header_lba}")
    size = struct.unpack_from("<I", header, 12)[0]
    alternate, = struct.unpack_from("<Q", header, 32)
    entries_lba, = struct.unpack_from("<Q", header, 72)
    count, entry_size = struct.unpack_from("<II", header, 80)
    f.seek(entries_lba * SECTOR)
    entries = bytearray(f.read(count * entry_size))
    renamed = 0
    for i in range(count):
        at = i * entry_size
        name = entries[at + 56:at + 128].decode("utf-16-le").rstrip("\0")
        if name == old:
            entries[at + 56:at + 128] = new.encode("utf-16-le").ljust(72, b"\0")
            renamed += 1
    if renamed != 1:
        sys.exit(f"{path}: {renamed} partitions named {old!r} in the table at LBA {header_lba}")
    struct.pack_into("<I", header, 88, zlib.crc32(entries))
    struct.pack_into("<I", header, 16, 0)
    struct.pack_into("<I", header, 16, zlib.crc32(header[:size]))
    f.seek(entries_lba * SECTOR)
    f.write(entries)
    f.seek(header_lba * SECTOR)
    f.write(header)
    return alternate


with open(path, "r+b") as f:
    backup = fix(f, 1)
    fix(f, backup)
print(f"{path}: partition {old!r} renamed {new!r}")
