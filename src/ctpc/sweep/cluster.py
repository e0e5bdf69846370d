"""Where the cells run: a Dask distributed client, local or remote.

Local (default): ``LocalCluster(processes=True, threads_per_worker=1)`` with one worker process
per core (or ``n_workers``), never more workers than cells. Each cell is one task; parallelism is
across cells, so torch gets one thread per task (Dask also sets OMP_NUM_THREADS=1 in workers).
Remote: ``Client("tcp://host:8786")`` to a cluster started by hand (``dask scheduler`` and
``dask worker tcp://host:8786 --nthreads 1`` on each machine; see docs/guide/sweeps.md). The address
is checked before anything starts (:func:`check_scheduler_address`), and a scheduler that is not
there fails within seconds, not after the 20 s connection timeout; one that listens but is not
a Dask scheduler (a web server, a socket that never answers) within HANDSHAKE_TIMEOUT_S more.

Before any cell runs, every cell gets the checks its task would make before computing
(:func:`check_cell`): at planning, and for a cluster given by address or client, what depends
on the machine once more on one of its workers (:func:`check_cells`). An interrupt (Ctrl-C,
SIGTERM) closes the local cluster without distributed's log lines and warnings; its worker
processes ignore Ctrl-C (the whole terminal's process group gets it), the client closes them.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings

import dask
import xarray as xr

from ctpc.common.errors import InputError
from ctpc.config.schema import Config, ConfigError

# The comm schemes distributed can connect a client over (distributed.comm.registry: tcp and
# tls always; inproc for a scheduler in this process; ucx and ws/wss with extra packages).
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "inproc", "ws", "wss")
EXAMPLE_ADDRESS = "tcp://10.0.0.5:8786"
PROBE_TIMEOUT_S = 5.0      # a scheduler that does not accept a TCP connection by then is not up
HANDSHAKE_TIMEOUT_S = 5.0  # then one Dask `identity` call must be answered by a scheduler
CONNECT_TIMEOUT = "20s"    # the Dask handshake after the TCP probe succeeded


def check_scheduler_address(address: str) -> tuple[str, str, int | None]:
    """Parse ``--scheduler``: ``SCHEME://HOST:PORT`` (IPv6 hosts in brackets) or ``HOST:PORT``
    (tcp, distributed's default), or ``inproc://...``. Returns (scheme, host, port); raises
    ConfigError naming the accepted forms."""
    text = str(address).strip()
    remote = [s for s in SCHEDULER_SCHEMES if s != "inproc"]
    accepted = (f"accepted: SCHEME://HOST:PORT with SCHEME one of {', '.join(remote)} (e.g. "
                f"{EXAMPLE_ADDRESS}, the address `dask scheduler` prints), or the inproc:// "
                "address of a scheduler in this process")
    if not text:
        raise ConfigError(f"--scheduler: empty address; {accepted}")
    scheme, sep, loc = text.rpartition("://")
    if not sep:
        scheme, loc = "tcp", text
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        raise ConfigError(f"--scheduler {text}: {scheme}:// is the dashboard's web address, not "
                          f"the scheduler's; use the scheduler's own address, by default port "
                          f"8786 ({EXAMPLE_ADDRESS}); {accepted}")
    if scheme not in SCHEDULER_SCHEMES:
        raise ConfigError(f"--scheduler {text}: unknown scheme {scheme!r}; {accepted}")
    if scheme == "inproc":
        if not loc:
            raise ConfigError(f"--scheduler {text}: empty inproc address; {accepted}")
        return scheme, loc, None
    if loc.startswith("["):                              # [IPv6]:port
        host, close, rest = loc[1:].partition("]")
        port_text = rest[1:] if close and rest.startswith(":") else ""
    else:
        host, _, port_text = loc.rpartition(":")
    if not host or "/" in host:
        given = f"after {scheme}://" if sep else "(no SCHEME:// given, so tcp:// is assumed)"
        raise ConfigError(f"--scheduler {text}: expected HOST:PORT {given}; {accepted}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--scheduler {text}: the port must be a number 1 .. 65535 (the "
                          f"scheduler's default is 8786); {accepted}")
    try:      # ucx and ws need optional packages: say so instead of a ValueError later
        from distributed.comm.registry import get_backend
        get_backend(scheme)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--scheduler {text}: the {scheme}:// transport is not available in "
                          f"this installation ({exc}); use tcp:// or install its package") \
            from None
    return scheme, host, int(port_text)


def _probe(address: str, host: str, port: int) -> None:
    """Fail fast: distributed retries a refused connection until its timeout (20 s); one TCP
    connect says at once whether anything listens there."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except ConnectionRefusedError:
        raise ConfigError(f"--scheduler {address}: connection refused: no scheduler listens on "
                          f"{host}:{port}. Start one with `dask scheduler` (and workers with "
                          "`dask worker ADDRESS`) and pass the address it prints, or leave out "
                          "--scheduler to run on a local cluster") from None
    except TimeoutError:      # socket.timeout is TimeoutError since Python 3.10
        raise ConfigError(f"--scheduler {address}: no answer from {host}:{port} within "
                          f"{PROBE_TIMEOUT_S:g} s (a firewall, or the wrong host)") from None
    except OSError as exc:      # unknown host name, network unreachable
        raise ConfigError(f"--scheduler {address}: cannot reach {host}:{port} "
                          f"({exc.strerror or exc})") from None


def _handshake(address: str, host: str, port: int) -> None:
    """Ask what listens at ``address`` who it is (distributed's ``identity`` call), within
    HANDSHAKE_TIMEOUT_S in all. A scheduler answers at once; anything else listening there (a
    web server, a socket that never answers or answers garbage) held ``Client()`` past its own
    timeout (over 300 s), or failed with a MemoryError on the garbage's "frame length". Runs on
    a thread of its own (the caller may have an event loop running)."""
    result: dict = {}

    async def ask():
        from distributed.comm import connect
        from distributed.security import Security
        comm = await connect(address, timeout=HANDSHAKE_TIMEOUT_S,
                             **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def ask_bounded():
        try:
            result["answer"] = asyncio.run(asyncio.wait_for(ask(), HANDSHAKE_TIMEOUT_S))
        except BaseException as exc:  # noqa: BLE001 - whatever fails, it is not a scheduler
            result["error"] = exc

    thread = threading.Thread(target=ask_bounded, name="ctpc-scheduler-handshake", daemon=True)
    thread.start()
    thread.join(HANDSHAKE_TIMEOUT_S + 2.0)
    answer, error = result.get("answer"), result.get("error")
    if isinstance(answer, dict) and answer.get("type") == "Scheduler":
        return
    if thread.is_alive() or isinstance(error, TimeoutError):
        why = f"no Dask answer within {HANDSHAKE_TIMEOUT_S:g} s"
    elif type(error).__name__ == "CommClosedError":
        why = "it closed the connection without a Dask answer"
    elif isinstance(error, OSError):            # e.g. a TLS failure
        why = f"{type(error).__name__}: {str(error)[:120]}"
    elif error is not None:                     # a reply that is not Dask's wire format
        why = f"its reply is not Dask's protocol ({type(error).__name__})"
    else:
        kind = answer.get("type") if isinstance(answer, dict) else None
        why = (f"it is a Dask {kind}, not the scheduler" if kind else
               f"it answered {str(answer)[:60]!r}")
    raise ConfigError(f"--scheduler {address}: something listens on {host}:{port} but it is not "
                      f"a Dask scheduler ({why}). Pass the address `dask scheduler` prints (its "
                      f"default port is 8786, e.g. {EXAMPLE_ADDRESS}; a dashboard or another "
                      "service's port does not work), or leave out --scheduler to run on a "
                      "local cluster")


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
        scheme, host, port = check_scheduler_address(scheduler)
        if port is not None and scheme != "ucx":
            _probe(scheduler, host, port)
            _handshake(scheduler, host, port)
        try:
            remote = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError) as exc:     # TimeoutError is an OSError
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({exc}); start one with "
                              "`dask scheduler` and workers with `dask worker ADDRESS`, and "
                              f"pass the address it prints ({EXAMPLE_ADDRESS})") from None
        with remote:
            yield remote
        return
    # No dashboard, and the scheduler's HTTP server on a free loopback port: its default 8787
    # collided with other clusters on a shared machine (a warning at every start).
    with _QuietOnError() as quiet, \
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                         dashboard_address=None, preload=[WORKER_PRELOAD],
                         scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster) as local:
        try:
            yield local
        except BaseException:
            quiet.on()       # before the cluster closes: its close is what logs and warns
            raise


class _QuietOnError:
    """Once :meth:`on` is called, no log record and no warning until the block ends: an
    interrupted sweep closes its local cluster with one line, not distributed's messages about
    tasks, workers and comms cut short."""

    def __init__(self):
        self._warnings = None

    def on(self) -> None:
        if self._warnings is None:
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("ignore")
            self._disabled = logging.root.manager.disable
            logging.disable(logging.CRITICAL)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self._warnings is not None:
            logging.disable(self._disabled)
            self._warnings.__exit__(None, None, None)
            self._warnings = None
        return False


# Preload of the local cluster's worker processes (Dask runs its dask_setup as each starts).
# Ctrl-C in a terminal signals its whole process group, workers included, and each printed its
# interrupted event loop's traceback (a batch system's SIGTERM to the group left a
# leaked-semaphore warning): they ignore both, and the client, which handles them, closes them.
# (A worker whose client process is gone, even by SIGKILL, exits by itself: distributed.process.)
# Script text, not a module name: a worker starts without importing ctpc (and torch).
WORKER_PRELOAD = """\
import signal, threading
def dask_setup(worker):
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
"""


# Brian2 keeps global state (preferences, device, clocks): one Brian2 cell at a time per
# process, whatever the number of worker threads.
_BRIAN2_LOCK = threading.Lock()


def import_brian2_in_worker() -> None:
    """Import Brian2 from a Dask task thread.

    Root cause of "signal only works in main thread" in every brian2 cell: ``brian2/__init__.py``
    ends with ``signal.signal(signal.SIGINT, _InterruptHandler(...))`` (a Ctrl-C handler that
    stops a running simulation after the current step), and Python allows ``signal.signal``
    only in the main thread. Dask runs tasks in worker threads: in the worker processes of a
    local or remote cluster, and in the client's process for an in-process (threaded) client.
    The import therefore raises, and every later attempt raises again.

    The fix skips only that one call: during the import, ``signal.signal`` called from a thread
    other than the main thread installs nothing and returns the current handler; calls from the
    main thread go through unchanged. A worker then has no Brian2 Ctrl-C handler, which it does
    not need (a worker is stopped by its nanny or the cluster, not by Ctrl-C, and ctpc turns that
    handler off for its runs anyway: ``core.stop_on_keyboard_interrupt``). This works the same on
    every kind of cluster with no worker plugin or preload to install. Importing Brian2 once in
    each worker's main thread (a plugin) would not cover the in-process client, whose workers
    have no main thread of their own."""
    if "brian2" in sys.modules:
        return
    if threading.current_thread() is threading.main_thread():
        importlib.import_module("brian2")
        return
    real_signal = signal.signal

    def main_thread_only(signalnum, handler):
        if threading.current_thread() is threading.main_thread():
            return real_signal(signalnum, handler)
        return signal.getsignal(signalnum)

    with _BRIAN2_LOCK:
        signal.signal = main_thread_only
        try:
            importlib.import_module("brian2")
        finally:
            signal.signal = real_signal


def check_cell(cfg: Config, *, machine: bool = True) -> None:
    """The checks the task of a cell (:func:`run_group`) makes before it computes, without
    computing (ConfigError): :func:`ctpc.training.check_training` for a training cell, else
    :func:`ctpc.sim.simulation.check_simulation` (a cell keeps its records in memory). ``machine``: also
    what depends on the machine that runs the cell (device, CUDA graphs, C++ compiler; Brian2,
    imported here as in a worker)."""
    from ctpc.sim import simulation as run
    from ctpc import training

    if cfg.training is not None:
        training.check_training(cfg, machine=machine)
        return
    if machine and cfg.backend == "brian2":
        shown = warnings.showwarning          # importing Brian2 routes warnings to its log
        try:
            import_brian2_in_worker()
        except ImportError as exc:
            raise ConfigError(f"backend: brian2 needs the brian2 package, which cannot be "
                              f"imported here ({exc}); install it (pip install brian2) or use "
                              "backend: torch") from None
        finally:
            warnings.showwarning = shown
    run.check_simulation(cfg, in_memory=True, machine=machine)


def check_cells(configs: list[dict]) -> tuple[int, str] | None:
    """The task a sweep on a cluster given by address or client runs on one of its workers
    before any cell: each config is loaded there and gets :func:`check_cell` (machine checks
    included). Returns (index, message) of the first refused config, or None."""
    from ctpc.build.resolve import load_config

    for i, raw in enumerate(configs):
        try:
            check_cell(load_config(raw), machine=True)
        except InputError as exc:
            return i, str(exc)
    return None


def run_group(configs: list[Config], commands: list[str]) -> list[tuple[xr.Dataset, dict | None]]:
    """The task each worker runs: the cells of one replica group (see :mod:`.groups`) as one
    program; returns, per cell, its dataset fully in memory and, for a training cell, its final
    weights {"w1": ..} (the client writes both, so workers need no shared file system).

    ``configs``: the cells' resolved configs (:class:`ctpc.build.resolve.Resolved`), pickled to
    the worker as they are: nothing is parsed or resolved again here, and the weights file is
    not read again (the weights travel in ``cfg.found``)."""
    import torch

    from ctpc.sim import simulation as run
    from ctpc import training

    brian2 = configs[0].backend == "brian2"
    if brian2:
        import_brian2_in_worker()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if configs[0].training is not None:
            for cfg in configs:       # what a training run refuses on this worker's machine
                training.check_training(cfg)
            out = training.train_replicas(configs)     # (dataset, the weights file's arrays)
            for (ds, _), cmd in zip(out, commands):
                ds.attrs["history"] = ds.attrs["history"].replace(
                    "ctpc.train() (Python API)", cmd)
            return out
        with _BRIAN2_LOCK if brian2 else contextlib.nullcontext():
            datasets = run.simulate_replicas(configs, commands)
        # Traces of a layer subset are lazily padded with dask; compute them here,
        # synchronously, never through the distributed scheduler from inside a task.
        with dask.config.set(scheduler="synchronous"):
            return [(ds.load(), None) for ds in datasets]
    finally:
        torch.set_num_threads(threads)    # matters only for an in-process (threaded) client
