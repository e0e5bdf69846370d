"""One split of a data set as stored, before scaling and normalisation (shared by the sources)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawSplit:
    """One split as a source read it; arrays are never modified (often read-only views).

    x:         ``[n, D]`` numbers as stored: uint8 pixels 0..255 (IDX), grey levels 0..16
               (digits) or the .npz's numbers (finite).
    labels:    int64 ``[n]`` classes ``0 .. n_classes-1``; None when the file holds real-valued
               targets instead (an .npz single set used by simulate).
    targets:   float ``[n, O]`` real-valued targets when ``labels`` is None, else None.
    n_classes: O, the width of the one-hot (or target) vectors.
    scale:     ``x / scale`` is the [0, 1] pixel value (255, 16; 1 for .npz).
    mean, std: the source's default normalisation ``(x/scale - mean) / std``; None = none.
    where:     the config key and file it came from, to start error messages with.
    names:     what the inputs and targets are called in messages (an .npz's array names).
    """
    x: np.ndarray
    labels: np.ndarray | None
    targets: np.ndarray | None
    n_classes: int
    scale: float
    mean: float | None
    std: float | None
    where: str
    names: tuple[str, str] = ("x", "y")

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def head(self, n: int) -> "RawSplit":
        """The first ``n`` examples (views, no copy)."""
        pick = lambda a: None if a is None else a[:n]
        return dataclasses.replace(self, x=self.x[:n], labels=pick(self.labels),
                                   targets=pick(self.targets))
