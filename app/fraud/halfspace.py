"""Half-space trees whose window masses are counted once per window, not once per event.

River's ``HalfSpaceTrees`` (Tan, Ting and Liu, 2011) walks every tree for every
event it learns, adding one to the mass of each node on the path; at the end of a
window the masses move to the reference side, and scoring reads only those. Since
a score never reads the masses of the window being filled (every feature is always
present, so no walk falls back on them), nothing observable happens between the
ends of two windows but the counting. This detector keeps the window's points
instead and counts them in one vectorised pass when the window closes: the same
trees (River builds them, from the same seeded generator), the same reference
masses, the same scores to the bit, at about a tenth of the cost of learning an event.

It speaks River's interface (``learn_one``, ``score_one``) and is seeded.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Mapping
from random import Random
from typing import Any

import numpy as np
from river.base import AnomalyDetector
from river.tree.padded import PaddedBranch, make_padded_tree

# River's padding of each split away from the edges of its range (HalfSpaceTrees' own).
PADDING = 0.15
# Scoring stops below this share of the window in a node (the paper's constant).
SIZE_LIMIT_SHARE = 0.1


class WindowedHalfSpaceTrees(AnomalyDetector):
    """Half-space trees over a fixed set of features, each in its ``limits``.

    Every point learned and scored must carry every feature named in ``limits``
    (a missing one raises ``KeyError``): River would walk it by masses the window has
    not finished counting, which this detector does not keep.
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Mapping[str, tuple[float, float]] | None = None,
        seed: int | None = None,
    ) -> None:
        if not limits:
            raise ValueError("limits must name every feature with its (low, high) range")
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.limits = dict(limits)
        self.seed = seed
        self.features: tuple[str, ...] = tuple(sorted(self.limits))
        # A point's values in ``features`` order, in one call (learnt from every event).
        pick = operator.itemgetter(*self.features)
        self._values: Callable[[Mapping[Any, float]], tuple[float, ...]] = (
            pick if len(self.features) > 1 else lambda x: (pick(x),)
        )
        splits, thresholds = _flat_trees(
            self.limits, self.features, n_trees=n_trees, height=height, seed=seed
        )
        # Per tree, in heap order (node k's children are 2k+1 and 2k+2): the split's
        # feature (an index into ``features``) and threshold; leaves have neither.
        self._splits = splits
        self._thresholds = thresholds
        self._split_lists: list[list[int]] = splits.tolist()
        self._threshold_lists: list[list[float]] = thresholds.tolist()
        nodes = 2 ** (height + 1) - 1
        # Per tree, from the last full window (None until one has closed): whether a walk
        # goes on below each node, and the sum of mass x 2**depth along the path down to
        # it (a score's share of that tree when the walk ends there). A walk then reads
        # one flag per level, as River's reads a mass, a weight and two bounds.
        self._reference: list[tuple[list[bool], list[int]]] | None = None
        self._window: list[tuple[float, ...]] = []
        self._nodes = nodes

    @property
    def windows_closed(self) -> bool:
        """Whether a whole window has been learned (until then every score is 0)."""
        return self._reference is not None

    @property
    def max_score(self) -> int:
        """The largest mass sum a point can reach: scores are 1 minus their share of it."""
        return self.n_trees * self.window_size * self._nodes

    def learn_one(self, x: Mapping[Any, float]) -> None:
        self._window.append(self._values(x))
        if len(self._window) == self.window_size:
            self._reference = self._walks(self._count(np.array(self._window, dtype=np.float64)))
            self._window.clear()

    def score_one(self, x: Mapping[Any, float]) -> float:
        score = self._score(x, floor=None)
        assert score is not None  # without a floor every walk is finished
        return score

    def score_at_least(self, x: Mapping[Any, float], floor: float) -> float | None:
        """``score_one(x)`` if it is at least ``floor``, else None, usually without walking
        every tree: each tree only adds to the mass a score subtracts, so once the trees
        walked so far put the score below ``floor`` the rest cannot lift it back."""
        return self._score(x, floor=floor)

    def _score(self, x: Mapping[Any, float], *, floor: float | None) -> float | None:
        reference = self._reference
        if reference is None:
            return 0.0 if floor is None or floor <= 0.0 else None
        point = self._values(x)
        max_score = self.max_score
        total = 0
        for (goes_on, path_mass), splits, thresholds in zip(
            reference, self._split_lists, self._threshold_lists, strict=True
        ):
            node = 0
            while goes_on[node]:
                # River goes left when ``value < threshold`` and right otherwise (NaN too).
                node = 2 * node + (1 if point[splits[node]] < thresholds[node] else 2)
            total += path_mass[node]
            # The same expression as the result: it only falls as ``total`` grows.
            if floor is not None and 1.0 - total / max_score < floor:
                return None
        return 1.0 - total / max_score

    def _walks(self, masses: np.ndarray[Any, Any]) -> list[tuple[list[bool], list[int]]]:
        """Per tree, the flags and path sums ``_score`` reads, from each node's mass."""
        internal = 2**self.height - 1
        path_mass = masses.copy()
        for depth in range(1, self.height + 1):
            first, last = 2**depth - 1, 2 ** (depth + 1) - 1
            parents = (np.arange(first, last) - 1) // 2
            path_mass[:, first:last] = path_mass[:, parents] + masses[:, first:last] * 2**depth
        goes_on = masses >= SIZE_LIMIT_SHARE * self.window_size
        goes_on[:, internal:] = False  # leaves
        return list(zip(goes_on.tolist(), path_mass.tolist(), strict=True))

    def _count(self, points: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Each node's mass over ``points`` (one row each), per tree."""
        trees, count, nodes = self.n_trees, len(points), self._nodes
        rows = np.arange(trees)[:, None]
        columns = np.arange(count)[None, :]
        node = np.zeros((trees, count), dtype=np.int64)
        # Every point visits one node per level of every tree: the visits, numbered across
        # trees (tree * nodes + node), counted with one bincount at the end.
        visits = [node.copy()]
        for _ in range(self.height):
            values = points[columns, self._splits[rows, node]]
            # River goes left when ``value < threshold`` and right otherwise (NaN too).
            node = 2 * node + np.where(values < self._thresholds[rows, node], 1, 2)
            visits.append(node)
        numbered = (np.stack(visits) + rows * nodes).ravel()
        return np.bincount(numbered, minlength=trees * nodes).reshape(trees, nodes)


def _flat_trees(
    limits: Mapping[str, tuple[float, float]],
    features: tuple[str, ...],
    *,
    n_trees: int,
    height: int,
    seed: int | None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """River's trees, built as ``HalfSpaceTrees`` builds them on its first point (the
    same generator, the same calls), laid out flat in heap order."""
    rng = Random(seed)
    index = {name: i for i, name in enumerate(features)}
    internal = 2**height - 1
    splits = np.full((n_trees, internal), -1, dtype=np.int64)
    thresholds = np.zeros((n_trees, internal), dtype=np.float64)
    for tree in range(n_trees):
        root = make_padded_tree(
            limits={name: limits[name] for name in features},
            height=height,
            padding=PADDING,
            rng=rng,
            r_mass=0,
            l_mass=0,
        )
        level: collections.deque[tuple[int, Any]] = collections.deque([(0, root)])
        while level:
            position, node = level.popleft()
            if not isinstance(node, PaddedBranch):
                continue
            splits[tree, position] = index[node.feature]
            thresholds[tree, position] = node.threshold
            level.append((2 * position + 1, node.children[0]))
            level.append((2 * position + 2, node.children[1]))
    return splits, thresholds
