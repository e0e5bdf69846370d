"""The IDX file format (MNIST, Fashion-MNIST): reading, validating, finding files by name.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, 0x08 = unsigned
byte; ``NN`` the number of dimensions), ``NN`` big-endian uint32 sizes, then the elements in C
order. Images are ``[n, rows, cols]`` uint8 grey levels 0..255, labels ``[n]`` uint8 classes.
Files may be gzip-compressed (name ending in ``.gz``) or raw.

Everything wrong with a file raises :class:`IdxError`, whose message names the file and the
problem; :mod:`ctpc.data` turns it into a ConfigError naming the config key, and
:mod:`ctpc.fetch` uses it to validate downloads. Parsed files are cached per (path, size,
modification time), so describing a config and loading its batch read each file once.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

PREFIX = {"train": "train", "test": "t10k"}      # file-name prefix of each split
KIND_NDIM = {"images": 3, "labels": 1}           # the "idx3" / "idx1" in the file names
N_CLASSES = 10
UBYTE = 0x08
OTHER_TYPES = {0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """A file that is not a usable IDX file; ``str()`` is ``'<path>: <problem>'``."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


def file_name(split: str, kind: str, gz: bool = True) -> str:
    """The canonical name, e.g. ``train-images-idx3-ubyte.gz``; split 'train'|'test'."""
    name = f"{PREFIX[split]}-{kind}-idx{KIND_NDIM[kind]}-ubyte"
    return name + ".gz" if gz else name


def find_file(directory: Path, split: str, kind: str) -> Path | None:
    """The IDX file of ``split`` ('train'|'test') and ``kind`` ('images'|'labels') in
    ``directory``, or None. Accepts ``-`` or ``.`` before ``idxN`` and an optional ``.gz``;
    prefers the uncompressed file when both exist."""
    pattern = re.compile(rf"{PREFIX[split]}-{kind}[-.]idx{KIND_NDIM[kind]}-ubyte(\.gz)?")
    hits = sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    return hits[0] if hits else None


# ------------------------------------------------------------------------------ parsing
def _decompress(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except gzip.BadGzipFile as exc:
        if not raw.startswith(GZIP_MAGIC):
            raise IdxError(path, "not a gzip file although its name ends in .gz "
                                 "(rename it without .gz if it is a raw IDX file)") from None
        raise IdxError(path, f"corrupt gzip file ({exc})") from None
    except EOFError:
        raise IdxError(path, "truncated gzip file: the compressed stream ends early "
                             "(an interrupted download? fetch it again)") from None
    except zlib.error as exc:
        raise IdxError(path, f"corrupt gzip file ({exc})") from None


def read_bytes(path: Path, gz: bool | None = None) -> bytes:
    """The file's IDX bytes, decompressed if ``gz`` (None: if its name ends in ``.gz``)."""
    path = Path(path)
    gz = path.name.endswith(".gz") if gz is None else gz
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IdxError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not raw:
        raise IdxError(path, "empty file (0 bytes; an interrupted download?)")
    if gz:
        return _decompress(path, raw)
    if raw.startswith(GZIP_MAGIC):
        raise IdxError(path, "gzip-compressed data but the name does not end in .gz; "
                             "rename it to end in .gz")
    return raw


def _header(path: Path, buf: bytes) -> tuple[int, tuple[int, ...]]:
    """(payload offset, shape) from the magic number and the dimension sizes."""
    if len(buf) < 4:
        raise IdxError(path, f"too short to be an IDX file ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    if buf[0] != 0 or buf[1] != 0 or buf[3] == 0:
        raise IdxError(path, f"bad IDX magic number 0x{magic:08x}: not an IDX file "
                             "(expected 0x00000801 for labels or 0x00000803 for images)")
    if buf[2] != UBYTE:
        kind = OTHER_TYPES.get(buf[2], f"unknown type 0x{buf[2]:02x}")
        raise IdxError(path, f"IDX magic number 0x{magic:08x} says the elements are {kind}; "
                             "ctpc reads unsigned-byte IDX files (type 0x08)")
    ndim = buf[3]
    offset = 4 + 4 * ndim
    if len(buf) < offset:
        raise IdxError(path, f"truncated IDX header ({len(buf)} bytes; {ndim} dimensions "
                             f"need {offset})")
    return offset, struct.unpack(f">{ndim}I", buf[4:offset])


def parse(path: Path, buf: bytes) -> np.ndarray:
    """A uint8 array of the header's shape from decompressed IDX bytes (read-only view)."""
    offset, shape = _header(path, buf)
    expected, found = int(np.prod(shape, dtype=np.int64)), len(buf) - offset
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes after the data"
        dims = " x ".join(map(str, shape))
        raise IdxError(path, f"the header says {dims} = {expected} bytes of data but the file "
                             f"holds {found} ({what})")
    return np.frombuffer(buf, dtype=np.uint8, offset=offset).reshape(shape)


def check_kind(path: Path, array: np.ndarray, kind: str) -> None:
    """Images must be ``[n, rows, cols]`` (any ndim >= 2), labels ``[n]`` in 0..9, n >= 1."""
    shape = " x ".join(map(str, array.shape))
    if kind == "images" and array.ndim < 2:
        raise IdxError(path, f"holds a 1-dimensional array of {array.shape[0]} values, which "
                             "looks like labels, not images; are the images and labels files "
                             "swapped?")
    if kind == "labels" and array.ndim != 1:
        raise IdxError(path, f"holds a {shape} array, which looks like images, not labels "
                             "(expected one label per example); are the images and labels "
                             "files swapped?")
    if array.shape[0] == 0:
        raise IdxError(path, "holds no examples")
    if kind == "images" and 0 in array.shape[1:]:
        raise IdxError(path, f"holds {array.shape[0]} images of "
                             f"{' x '.join(map(str, array.shape[1:]))} pixels: an image needs "
                             "at least one pixel")
    if kind == "labels":
        bad = array >= N_CLASSES
        if bad.any():
            raise IdxError(path, f"holds {int(bad.sum())} label(s) outside 0..{N_CLASSES - 1} "
                                 f"(e.g. {int(array[bad][0])})")


@lru_cache(maxsize=8)
def _read_cached(path: str, size: int, mtime_ns: int, kind: str) -> np.ndarray:
    p = Path(path)
    array = parse(p, read_bytes(p))
    check_kind(p, array, kind)
    return array


def read(path: Path, kind: str) -> np.ndarray:
    """A validated IDX array of ``kind`` 'images' (uint8 ``[n, rows, cols]``) or 'labels'
    (uint8 ``[n]``, values 0..9). Read-only; cached until the file changes."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise IdxError(path, f"cannot be read ({exc.strerror or exc})") from None
    return _read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns, kind)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, rows, cols]`` and labels ``[n]`` of one split, with the counts checked."""
    images, labels = read(images_path, "images"), read(labels_path, "labels")
    if len(images) != len(labels):
        raise IdxError(images_path, f"holds {len(images)} images but {labels_path.name} holds "
                                    f"{len(labels)} labels; both files must come from the "
                                    "same split")
    return images, labels
