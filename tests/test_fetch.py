"""python -m ctpc.fetch, offline: a file:// mirror in tmp_path stands in for the real one, with the
data set's checksums and shapes replaced by those of small local IDX files."""
import gzip
import hashlib
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import ctpc
from ctpc.cli import fetch
from ctpc.data import load_split

from datafiles import NAMES, idx_bytes, mnist_arrays

SHAPES = {"train": (6, 4, 3), "test": (3, 4, 3)}


def small_shape(name: str) -> tuple:
    """The shape of the small stand-in for the IDX file ``name``."""
    shape = SHAPES["train" if name.startswith("train") else "test"]
    return shape if "images" in name else shape[:1]


def gz_files(arrays) -> dict[str, bytes]:
    return {NAMES[key] + ".gz": gzip.compress(idx_bytes(a), mtime=0) for key, a in arrays.items()}


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror with small valid files; DATASETS['mnist'] and ['fashion-mnist'] expect
    exactly them. Returns (mirror URL, mirror directory, {name: bytes})."""
    files = gz_files(mnist_arrays(n_train=6, n_test=3))
    where = tmp_path / "mirror"
    where.mkdir()
    for name, content in files.items():
        (where / name).write_bytes(content)
    for key in ("mnist", "fashion-mnist"):
        real = fetch.DATASETS[key]
        remotes = tuple(fetch.Remote(r.name, hashlib.sha256(files[r.name]).hexdigest(),
                                     small_shape(r.name), len(files[r.name]))
                        for r in real.files)
        monkeypatch.setitem(fetch.DATASETS, key, fetch.DataSet(real.mirror, remotes, real.settings))
    return where.as_uri(), where, files


@pytest.fixture
def count_downloads(monkeypatch):
    calls = []
    real = fetch.urllib.request.urlopen

    def counting(url, *a, **kw):
        calls.append(url)
        return real(url, *a, **kw)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", counting)
    return calls


def leftovers(directory: Path):
    return [p.name for p in directory.iterdir() if p.name.endswith(".part")]


def test_fetch_downloads_verifies_and_says_how_to_use(mirror, tmp_path, capsys, small):
    url, _, files = mirror
    dest = tmp_path / "data" / "mnist"
    assert fetch.main(["mnist", str(dest), "--mirror", url, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"--set data.source=idx --set data.path={dest}" in out
    assert "data.mean" not in out
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
    cfg = ctpc.load_config(small(network={"input_dim": None, "output_dim": None},
                                 data={"source": "idx", "path": str(dest)}))
    assert load_split(cfg.data, cfg.network, "test").n == 3


def test_fashion_prints_its_normalisation(mirror, tmp_path, capsys):
    url, _, _ = mirror
    assert fetch.main(["fashion-mnist", str(tmp_path / "f"), "--mirror", url, "--quiet"]) == 0
    assert "--set data.mean=0.2860 --set data.std=0.3530" in capsys.readouterr().out


def test_valid_files_are_kept_unless_forced(mirror, tmp_path, count_downloads, capsys):
    url, _, _ = mirror
    dest = tmp_path / "d"
    fetch.main(["mnist", str(dest), "--mirror", url, "--quiet"])
    assert len(count_downloads) == 4
    fetch.main(["mnist", str(dest), "--mirror", url, "--quiet"])
    assert len(count_downloads) == 4
    assert capsys.readouterr().out.count("already present, verified") == 4
    fetch.main(["mnist", str(dest), "--mirror", url, "--quiet", "--force"])
    assert len(count_downloads) == 8


def test_an_invalid_existing_file_is_downloaded_again(mirror, tmp_path, capsys):
    url, _, files = mirror
    dest = tmp_path / "d"
    dest.mkdir()
    name = NAMES["train", "labels"] + ".gz"
    (dest / name).write_bytes(b"half a file")
    assert fetch.main(["mnist", str(dest), "--mirror", url, "--quiet"]) == 0
    assert (dest / name).read_bytes() == files[name]
    assert "present but SHA-256" in capsys.readouterr().out


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path, capsys):
    url, where, _ = mirror
    name = NAMES["test", "images"] + ".gz"
    (where / name).write_bytes(gzip.compress(idx_bytes(np.ones((3, 4, 3))), mtime=0))
    dest = tmp_path / "d"
    assert fetch.main(["mnist", str(dest), "--mirror", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{name}: SHA-256 [0-9a-f]{{64}} does not match the expected", err), err
    assert "nothing was written" in err and "Traceback" not in err
    assert not (dest / name).exists() and not leftovers(dest)


@pytest.mark.parametrize("corrupt,expect", [
    (lambda good: good[:len(good) // 2], "truncated gzip file"),
    (lambda good: gzip.decompress(good), "not a gzip file"),
    (lambda good: gzip.compress(idx_bytes(np.zeros((5, 4, 3))), mtime=0),
     "IDX shape (5, 4, 3) is not the expected (6, 4, 3)"),
    (lambda good: gzip.compress(idx_bytes(np.zeros(6)), mtime=0),
     "IDX shape (6,) is not the expected (6, 4, 3)"),
])
def test_corrupt_download_leaves_nothing(mirror, tmp_path, monkeypatch, capsys, corrupt, expect):
    """A file whose checksum matches (the constants are wrong, or the mirror's table) but that
    is not the expected IDX file is refused too, and never installed."""
    url, where, files = mirror
    name = NAMES["train", "images"] + ".gz"
    bad = corrupt(files[name])
    (where / name).write_bytes(bad)
    remotes = tuple(fetch.Remote(r.name, hashlib.sha256(bad).hexdigest(), r.shape, r.size)
                    if r.name == name else r for r in fetch.DATASETS["mnist"].files)
    monkeypatch.setitem(fetch.DATASETS, "mnist",
                        fetch.DataSet(url, remotes, fetch.DATASETS["mnist"].settings))
    dest = tmp_path / "d"
    assert fetch.main(["mnist", str(dest)]) == 2           # the (patched) default mirror
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err
    assert not (dest / name).exists() and not leftovers(dest)


def test_network_errors_exit_2_in_one_line(mirror, tmp_path, monkeypatch, capsys):
    url, _, _ = mirror
    missing = Path(url.removeprefix("file://")).parent.joinpath("nowhere").as_uri()
    assert fetch.main(["mnist", str(tmp_path / "a"), "--mirror", missing, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download" in err and "--mirror" in err

    def offline(url, *a, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(fetch.urllib.request, "urlopen", offline)
    assert fetch.main(["mnist", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name resolution" in err and "network connection" in err
    assert not leftovers(tmp_path / "b")

    def http_404(url, *a, **kw):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", http_404)
    assert fetch.main(["mnist", str(tmp_path / "c"), "--quiet"]) == 2
    assert "HTTP 404 Not Found" in capsys.readouterr().err


def test_unusable_directory_exits_2(mirror, tmp_path, capsys):
    url, _, _ = mirror
    (tmp_path / "file").write_text("x")
    assert fetch.main(["mnist", str(tmp_path / "file"), "--mirror", url]) == 2
    assert "cannot create the directory" in capsys.readouterr().err


def test_the_real_tables():
    """Four files per data set, named as ctpc.data looks for them, with full SHA-256s."""
    for dataset in fetch.DATASETS.values():
        assert [r.name for r in dataset.files] == [NAMES[k] + ".gz" for k in (
            ("train", "images"), ("train", "labels"), ("test", "images"), ("test", "labels"))]
        for r in dataset.files:
            assert re.fullmatch("[0-9a-f]{64}", r.sha256) and r.size > 0
            assert r.shape[0] in (60000, 10000) and r.shape[1:] in ((), (28, 28))
    assert fetch.DATASETS["mnist"].mirror.startswith("https://")
