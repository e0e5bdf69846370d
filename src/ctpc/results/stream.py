"""Streaming records to disk: a long run's record slots go to scratch files chunk by chunk
instead of accumulating in memory.

:class:`RecordStream` is what :class:`ctpc.sim.recording.Recorder` hands each summarised chunk to
(host arrays, one leading slot axis). At the end :meth:`RecordStream.finish` gives the slots as
lazily read (dask) arrays, and :func:`ctpc.results.dataset.build_dataset` / :func:`ctpc.results.dataset.write_netcdf`
turn them into the run's file exactly as for an in-memory run (the same code, so the same
schema), reading the scratch files one block at a time.

The scratch is a directory next to the output, ``NAME.tmp-stream-PID``, holding one raw binary
file per array (C order, slot after slot). Raw files, not netCDF: appending hundreds of chunks
through HDF5 grew the process by 270 MB for 500 MB of records (its internal free lists keep
what it allocates per write), raw appends by nothing. A run killed midway leaves the directory
to :func:`ctpc.results.dataset.remove_stale_temporaries`, which removes it at the next run of the same
output. No torch here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import dask.array as da
import numpy as np

from ctpc.config.paths import OutputError

# Bytes of an array read back per block when the output is written: large enough
# that a long run's output is written in few compressed chunks, small enough that a reader of
# one time step decompresses little.
READ_BYTES = 16 * 2 ** 20


def scratch_path(out: str | Path) -> Path:
    """Where the records of a run writing ``out`` are streamed while it runs."""
    out = Path(out)
    return out.with_name(f"{out.name}.tmp-stream-{os.getpid()}")


class RecordStream:
    """Append-only store of record slots: ``append`` a chunk of arrays [k, ...] per name, then
    ``finish`` for lazily read arrays [n, ...] of every slot; ``remove`` deletes the scratch."""

    def __init__(self, path: str | Path, read_bytes: int = READ_BYTES):
        self.path = Path(path)
        self.slots = 0
        self.read_bytes = read_bytes
        self._files: dict = {}
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}   # dtype, slot shape

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Write k more slots of every array (each [k, ...], the same names, dtypes and slot
        shapes every time)."""
        k = len(next(iter(arrays.values())))
        try:
            if not self._files:
                self.path.mkdir(parents=True, exist_ok=True)
                for name, a in arrays.items():
                    self._layout[name] = (a.dtype, a.shape[1:])
                    self._files[name] = open(self.path / f"{name}.bin", "wb")
            for name, a in arrays.items():
                if (a.dtype, a.shape[1:]) != self._layout[name] or len(a) != k:
                    raise ValueError(f"record stream: {name} changed layout: {a.dtype} "
                                     f"{a.shape}, expected {self._layout[name]}")
                self._files[name].write(np.ascontiguousarray(a).data)
        except OSError as exc:
            raise OutputError(f"streaming the records to {str(self.path)!r} failed ({exc}); "
                              "free disk space or choose another output path") from exc
        self.slots += k

    def _close(self) -> None:
        for f in self._files.values():
            f.close()

    def finish(self) -> dict[str, da.Array]:
        """Close for writing; every array as a dask array [slots, ...] read from its file in
        blocks of about ``read_bytes``."""
        self._close()
        out = {}
        for name, (dtype, shape) in self._layout.items():
            raw = _RawSlots(self.path / f"{name}.bin", dtype, (self.slots, *shape))
            per_read = max(1, self.read_bytes // max(1, raw.slot_bytes))
            out[name] = da.from_array(raw, chunks=(per_read, *shape), asarray=False,
                                      fancy=False, meta=np.empty((0,) * raw.ndim, dtype))
        return out

    def remove(self) -> None:
        self._close()
        shutil.rmtree(self.path, ignore_errors=True)


class _RawSlots:
    """A raw C-order file of [slots, ...] values as an array-like that reads only the slots a
    block asks for (what :func:`dask.array.from_array` needs: shape, dtype, ndim, indexing)."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.ndim = len(shape)
        self.slot_size = int(np.prod(shape[1:], dtype=np.int64))
        self.slot_bytes = self.slot_size * self.dtype.itemsize

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first = key[0] if key else slice(None)
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            rest = (slice(None, None, step), *key[1:])
        else:                                   # one slot
            start, stop = int(first) % self.shape[0], int(first) % self.shape[0] + 1
            rest = (0, *key[1:])
        n = max(0, stop - start)
        data = np.fromfile(self.path, dtype=self.dtype, count=n * self.slot_size,
                           offset=start * self.slot_bytes).reshape(n, *self.shape[1:])
        return data[rest]
