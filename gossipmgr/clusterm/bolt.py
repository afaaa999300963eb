"""A read-only reader of Bolt database files (github.com/boltdb/bolt 1.3, etcd's bbolt).

Written for ``gossipmgr import clusterm``: clusterm kept its inventory in a Bolt file. The
PyPI ``boltdb`` package (0.0.2) was evaluated and not used: it opens the file read-write
(``O_RDWR | O_CREAT``, a writable mmap) even when asked for read-only, so it can create or
modify the file it should only read. This module opens the file ``rb`` and never writes.

The format (bolt's ``page.go``, ``db.go``, ``bucket.go``; all integers little-endian):

* The file is an array of pages of ``page_size`` bytes. Every page starts with a 16-byte
  header: ``id u64, flags u16, count u16, overflow u32``; flags 0x01 branch, 0x02 leaf,
  0x04 meta, 0x10 freelist. A page with ``overflow = n`` spans ``n + 1`` pages.
* Pages 0 and 1 are meta pages: ``magic u32 (0xED0CDAED), version u32 (2), page_size u32,
  flags u32, root bucket {root pgid u64, sequence u64}, freelist pgid u64, pgid u64,
  txid u64, checksum u64`` where the checksum is FNV-1a 64 of the 56 bytes before it.
  The valid meta with the higher txid is the current one (bolt alternates them).
* A branch page has ``count`` elements ``pos u32, ksize u32, pgid u64``; a leaf page has
  ``flags u32, pos u32, ksize u32, vsize u32``; ``pos`` counts from the element itself,
  the key follows at ``pos`` and the value right after the key.
* A leaf element with flag 0x01 is a sub-bucket: its value is a bucket header
  ``root pgid u64, sequence u64``. ``root == 0`` means an *inline* bucket: a whole page
  (header and elements) follows the header inside the value.

Nothing is cached and the whole file is read into memory: clusterm's inventories are small.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH = 0x01
LEAF = 0x02
META = 0x04
BUCKET_LEAF = 0x01

_PAGE_HDR = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic .. txid, checksum
_BRANCH_ELEM = struct.Struct("<IIQ")
_LEAF_ELEM = struct.Struct("<IIII")
_BUCKET_HDR = struct.Struct("<QQ")
#: bolt refuses trees deeper than this in practice; a guard against cyclic corrupt files.
_MAX_DEPTH = 64


class BoltError(Exception):
    """The file is not a Bolt database we can read (one line, with the file name)."""


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    txid: int
    pgid: int


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta_at(data: bytes, off: int) -> Meta | None:
    start = off + _PAGE_HDR.size
    if start + _META.size > len(data):
        return None
    magic, version, psize, _flags, root, _seq, _free, pgid, txid, checksum = _META.unpack_from(
        data, start
    )
    if magic != MAGIC or version != VERSION:
        return None
    if checksum != _fnv1a64(data[start : start + _META.size - 8]):
        return None
    return Meta(psize, root, txid, pgid)


class BoltFile:
    """One Bolt file, read once. ``buckets()`` names the top-level buckets, ``items(name)``
    yields a bucket's ``(key, value)`` pairs in key order (sub-buckets are skipped)."""

    def __init__(self, path: str | os.PathLike[str], *, check_lock: bool = True) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                if check_lock:
                    self._check_unlocked(f.fileno())
                self.data = f.read()
        except OSError as exc:
            raise BoltError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self.meta = self._pick_meta()

    def _check_unlocked(self, fd: int) -> None:
        # A running bolt writer (clusterm) holds an exclusive flock on the file. A shared
        # lock, taken and dropped at once, tells whether it is still running.
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BoltError(
                f"{self.path} is locked by another process (is clusterm still running? "
                "stop it first: its inventory may still change)"
            ) from None
        except OSError:  # a filesystem without flock: nothing to learn
            return
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _pick_meta(self) -> Meta:
        m0 = _meta_at(self.data, 0)
        sizes = [m0.page_size] if m0 is not None else []
        sizes += [1 << n for n in range(9, 17) if (1 << n) not in sizes]
        metas = [m0] if m0 is not None else []
        for ps in sizes:
            m1 = _meta_at(self.data, ps)
            if m1 is not None and m1.page_size == ps:
                metas.append(m1)
                break
        if not metas:
            raise BoltError(f"{self.path} is not a Bolt database (no valid meta page)")
        best = max(metas, key=lambda m: m.txid)
        if best.page_size < 512 or best.page_size & (best.page_size - 1):
            raise BoltError(f"{self.path}: invalid page size {best.page_size}")
        return best

    # ------------------------------------------------------------------ pages
    def _page(self, pgid: int) -> bytes:
        ps = self.meta.page_size
        off = pgid * ps
        if pgid < 2 or off + _PAGE_HDR.size > len(self.data):
            raise BoltError(f"{self.path}: page {pgid} is outside the file (corrupt?)")
        _id, _flags, _count, overflow = _PAGE_HDR.unpack_from(self.data, off)
        end = off + (overflow + 1) * ps
        if end > len(self.data):
            raise BoltError(f"{self.path}: page {pgid} runs past the end of the file")
        return self.data[off:end]

    def _walk(self, page: bytes, depth: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
        """Every leaf element under ``page``: (key, value, flags), in key order."""
        if depth > _MAX_DEPTH:
            raise BoltError(f"{self.path}: bucket tree deeper than {_MAX_DEPTH} (corrupt?)")
        if len(page) < _PAGE_HDR.size:  # an inline bucket's value cut short
            raise BoltError(f"{self.path}: a bucket page shorter than a page header")
        _id, flags, count, _ov = _PAGE_HDR.unpack_from(page, 0)
        for i in range(count):
            eoff = _PAGE_HDR.size + i * _LEAF_ELEM.size
            if eoff + _LEAF_ELEM.size > len(page):
                raise BoltError(f"{self.path}: page element {i} outside its page")
            if flags & BRANCH:
                pos, ksize, child = _BRANCH_ELEM.unpack_from(page, eoff)
                yield from self._walk(self._page(child), depth + 1)
            elif flags & LEAF:
                eflags, pos, ksize, vsize = _LEAF_ELEM.unpack_from(page, eoff)
                k0 = eoff + pos
                if k0 + ksize + vsize > len(page):
                    raise BoltError(f"{self.path}: leaf element {i} outside its page")
                yield page[k0 : k0 + ksize], page[k0 + ksize : k0 + ksize + vsize], eflags
            else:
                raise BoltError(f"{self.path}: unexpected page type 0x{flags:x} in a bucket")

    def _bucket_page(self, value: bytes) -> bytes:
        if len(value) < _BUCKET_HDR.size:
            raise BoltError(f"{self.path}: bucket header too short")
        root, _seq = _BUCKET_HDR.unpack_from(value, 0)
        if root == 0:  # inline bucket: its page is stored in the value itself
            return value[_BUCKET_HDR.size :]
        return self._page(root)

    def _bucket(self, name: str) -> bytes | None:
        for k, v, fl in self._walk(self._page(self.meta.root)):
            if fl & BUCKET_LEAF and k == name.encode():
                return self._bucket_page(v)
        return None

    # ------------------------------------------------------------------ reads
    def buckets(self) -> list[str]:
        return [
            k.decode("utf-8", "replace")
            for k, _v, fl in self._walk(self._page(self.meta.root))
            if fl & BUCKET_LEAF
        ]

    def items(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        """The bucket's key/value pairs; BoltError if there is no such bucket."""
        page = self._bucket(bucket)
        if page is None:
            raise BoltError(f'{self.path} has no bucket "{bucket}"')
        for k, v, fl in self._walk(page):
            if not fl & BUCKET_LEAF:
                yield k, v
