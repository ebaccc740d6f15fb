"""Which clips of one store train, select and test: the store's split column, its folds, or a seeded
stratified split (scikit-learn). Used by the `custom` task and the probe's inner validation splits.

Multi-label clips are stratified by their rarest label so rare classes reach every part; strata of
one clip join a common "rare" stratum. Where scikit-learn still cannot stratify, the split is a
seeded shuffle and the record says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cache_tools.clips.store import SPLIT_NAMES, ClipStore
from cache_tools.errors import ConfigError


@dataclass
class Assignment:
    source: str                         # "split column" | "folds" | "stratified split"
    train: np.ndarray                   # [n_train] clip indices (empty when cross-validating)
    valid: np.ndarray                   # [n_valid] (may be empty: no validation part)
    test: np.ndarray                    # [n_test]
    folds: np.ndarray | None = None     # [N] per-clip fold ids: cross-validation
    seed: int | None = None
    fractions: dict | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-able: where the parts come from and how many clips each holds."""
        out = {"source": self.source}
        if self.folds is not None:
            ids, counts = np.unique(self.folds, return_counts=True)
            out["folds"] = {int(k): int(c) for k, c in zip(ids, counts)}
        else:
            out["clips"] = {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}
        if self.seed is not None:
            out.update(seed=self.seed, fractions=self.fractions)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def strata(labels: np.ndarray) -> np.ndarray:
    """[N] class ids -> themselves; [N, C] multi-hot -> each clip's rarest label (-1: no label);
    then every stratum of one clip -> -2 (a common "rare" stratum)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        s = labels.astype(np.int64).copy()
    else:
        counts = labels.sum(0).astype(np.float64)                              # [C] clips per label
        s = np.where(labels > 0, counts[None, :], np.inf).argmin(1)            # [N] rarest label
        s[labels.sum(1) == 0] = -1
    values, counts = np.unique(s, return_counts=True)
    s[np.isin(s, values[counts < 2])] = -2
    return s


def hold_out(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
             notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): `fraction` of `indices` held out, stratified (module docstring); sorted."""
    from sklearn.model_selection import train_test_split
    indices = np.asarray(indices)
    if fraction <= 0 or len(indices) < 2:
        return np.sort(indices), indices[:0]
    try:
        kept, held = train_test_split(indices, test_size=fraction, random_state=seed,
                                      stratify=strata(np.asarray(labels)[indices]))
    except ValueError as e:                                                     # too few clips to stratify
        notes.append(f"not stratified ({e}); a seeded shuffle instead")
        kept, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(kept), np.sort(held)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[N] class ids or [N, C] multi-hot -> clips per class [C]."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.int64).sum(0)
    return np.bincount(labels.astype(np.int64), minlength=num_classes)


def require_classes(labels: np.ndarray, class_names: list[str], where, what: str = "clips") -> np.ndarray:
    """Clips per class [C] of `labels`; require_counts' ConfigError if fewer than two classes."""
    return require_counts(class_counts(labels, len(class_names)), class_names, where, what)


def require_counts(counts: np.ndarray, class_names: list[str], where, what: str = "clips") -> np.ndarray:
    """`counts` (clips per class [C]); ConfigError naming `where` if fewer than two classes have any
    `what`: a classifier of one class scores 1.0 on nothing (a folder given one level too high is one class)."""
    present = [class_names[c] for c in np.flatnonzero(counts)]
    if len(present) < 2:
        held = f"only class {present[0]!r}" if present else "no labelled clip"
        raise ConfigError(f"{where}: its {what} hold {held} ({int(counts.sum())} labels); a classifier needs two "
                          "classes or more (was the folder given one level too high?)")
    return counts


def too_small(counts: np.ndarray, class_names: list[str], parts: int) -> str | None:
    """A note naming the classes with fewer clips than `parts` (they cannot reach every part), or None."""
    small = [f"{class_names[c]!r} ({int(counts[c])} clip{'s' if counts[c] != 1 else ''})"
             for c in np.flatnonzero((counts > 0) & (counts < parts))]
    if not small:
        return None
    return (f"classes too small to split into {parts} parts (train / valid / test): {', '.join(small[:5])}"
            f"{f' and {len(small) - 5} more' if len(small) > 5 else ''}; they are missing from some parts")


def assign(store: ClipStore, seed: int, valid_fraction: float, test_fraction: float) -> Assignment:
    """The store's split column, else its folds, else a seeded stratified train/valid/test split.
    Fewer than two classes with clips (in the store, or in the split column's train part) is an error."""
    empty = np.zeros(0, np.int64)
    counts = require_classes(store.labels, store.class_names, store.path)
    if store.splits is not None:
        parts = {name: np.flatnonzero(store.splits == code) for code, name in enumerate(SPLIT_NAMES)}
        if not len(parts["train"]) or not len(parts["test"]):
            raise ConfigError(f"{store.path}: its split column holds {len(parts['train'])} train and "
                             f"{len(parts['test'])} test clips; both parts are needed")
        require_classes(np.asarray(store.labels)[parts["train"]], store.class_names, store.path, "train clips")
        return Assignment("split column", parts["train"], parts["valid"], parts["test"])
    if store.folds is not None:
        if len(np.unique(store.folds)) < 2:
            raise ConfigError(f"{store.path}: all clips are in fold {int(store.folds[0])}; cross-validation "
                             "needs two folds or more")
        return Assignment("folds", empty, empty, empty, folds=np.asarray(store.folds))
    if not (0 < test_fraction < 1 and 0 <= valid_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError(f"{store.path}: valid_fraction {valid_fraction} and test_fraction {test_fraction} must "
                         "be fractions with test > 0 and a sum below 1")
    notes: list[str] = [n for n in [too_small(counts, store.class_names, 3 if valid_fraction > 0 else 2)] if n]
    rest, test = hold_out(np.arange(len(store)), store.labels, test_fraction, seed, notes)
    train, valid = hold_out(rest, store.labels, valid_fraction / (1 - test_fraction), seed, notes)
    require_classes(np.asarray(store.labels)[train], store.class_names, store.path, "train part's clips")
    return Assignment("stratified split", train, valid, test, seed=seed,
                      fractions={"valid": valid_fraction, "test": test_fraction}, notes=notes)
