"""Streaming records to disk: a long run's record slots go to a scratch netCDF file chunk by
chunk instead of accumulating in memory.

:class:`RecordStream` is what :class:`ctpc.recording.Recorder` hands each summarised chunk to
(host arrays, one leading slot axis). At the end :meth:`RecordStream.finish` opens the slots
lazily (dask), and :func:`ctpc.io.build_dataset` / :func:`ctpc.io.write_netcdf` turn them into
the run's file exactly as for an in-memory run (the same code, so the same schema), reading the
scratch file one chunk at a time. The scratch file sits next to the output as
``NAME.tmp-stream-PID``: a run killed midway leaves it to
:func:`ctpc.io.remove_stale_temporaries`, which removes it at the next run of the same output.
No torch here.
"""
from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from .io import OutputError

SLOT = "slot"


def scratch_path(out: str | Path) -> Path:
    """Where the records of a run writing ``out`` are streamed while it runs."""
    out = Path(out)
    return out.with_name(f"{out.name}.tmp-stream-{os.getpid()}")


class RecordStream:
    """Append-only store of record slots: ``append`` a chunk of arrays [k, ...] per name, then
    ``finish`` for lazily loaded arrays [n, ...] of every slot; ``remove`` deletes the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.slots = 0
        self._nc: netCDF4.Dataset | None = None
        self._chunk = None

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Write k more slots of every array (each [k, ...], the same names every time)."""
        k = len(next(iter(arrays.values())))
        try:
            if self._nc is None:
                self._create(arrays)
            for name, a in arrays.items():
                self._nc.variables[name][self.slots:self.slots + k] = a
        except (OSError, RuntimeError) as exc:
            raise OutputError(f"streaming the records to {str(self.path)!r} failed ({exc}); "
                              "free disk space or choose another output path") from exc
        self.slots += k

    def _create(self, arrays: dict[str, np.ndarray]) -> None:
        self.path.unlink(missing_ok=True)
        nc = netCDF4.Dataset(self.path, "w", format="NETCDF4")
        nc.createDimension(SLOT, None)
        self._chunk = len(next(iter(arrays.values())))
        for name, a in arrays.items():
            dims = [SLOT]
            for i, n in enumerate(a.shape[1:]):
                dims.append(f"{name}_{i}")
                nc.createDimension(dims[-1], n)
            # one netCDF chunk per appended chunk: each append and each later read of a chunk
            # touches one block, uncompressed (a scratch file is read once)
            nc.createVariable(name, a.dtype, dims, chunksizes=(self._chunk, *a.shape[1:]))
        self._nc = nc

    def finish(self) -> dict[str, xr.DataArray]:
        """Close for writing and open every array lazily: name -> dask-backed [slots, ...]."""
        if self._nc is None:
            return {}
        self._nc.close()
        self._nc = None
        ds = xr.open_dataset(self.path, engine="netcdf4", chunks={SLOT: self._chunk},
                             mask_and_scale=False, cache=False)
        return {name: ds[name].data for name in ds.data_vars}

    def remove(self) -> None:
        if self._nc is not None:
            self._nc.close()
            self._nc = None
        self.path.unlink(missing_ok=True)
