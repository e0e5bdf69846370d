"""Where the cells run: a Dask distributed client, local or remote.

Local (default): ``LocalCluster(processes=True, threads_per_worker=1)`` with one worker process
per core (or ``n_workers``), never more workers than cells. Each cell is one task; parallelism is
across cells, so torch gets one thread per task (Dask also sets OMP_NUM_THREADS=1 in workers).
Remote: ``Client("tcp://host:8786")`` to a cluster started by hand (``dask scheduler`` and
``dask worker tcp://host:8786 --nthreads 1`` on each machine; see README "Sweeps").
"""
from __future__ import annotations

import contextlib
import os

import dask
import xarray as xr

from ..config import ConfigError


def local_worker_count(n_cells: int, n_workers: int | None = None) -> int:
    if n_workers is not None and n_workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {n_workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n_cells, n_workers or cores or 1))


@contextlib.contextmanager
def dask_client(*, scheduler: str | None, n_workers: int, client=None):
    """Yield a ``distributed.Client``: the one given, one connected to ``scheduler``, or a
    fresh local cluster (closed on exit, also on Ctrl-C)."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster
    if scheduler is not None:
        try:
            remote = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({exc}); start one with "
                              "`dask scheduler` and workers with `dask worker ADDRESS`, and "
                              "pass the address it prints (tcp://host:8786)") from None
        with remote:
            yield remote
        return
    # dashboard_address=None: no port to collide with other users' clusters on a shared machine.
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as local:
        yield local


def run_cell(config: dict, command: str | None = None) -> xr.Dataset:
    """The task each worker runs: simulate one cell and return its dataset, fully in memory
    (the client writes it, so workers need no shared file system)."""
    import torch

    from .. import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = run.simulate(config, command=command)
        # Traces of a layer subset are lazily padded with dask; compute them here,
        # synchronously, never through the distributed scheduler from inside a task.
        with dask.config.set(scheduler="synchronous"):
            return ds.load()
    finally:
        torch.set_num_threads(threads)    # matters only for an in-process (threaded) client
