"""Heads on frozen features: a linear layer (or one hidden layer, ReLU) trained with AdamW on cached
features, and the lr / weight-decay / step sweep that picks one on a validation part.

All heads of a sweep are one batched model (first layer [D, K, O]), so a step is one forward,
backward and AdamW update whatever K is. Every head starts from the same seeded weights and sees
the same minibatches, so retraining the chosen head alone reproduces it. Features are
standardised with the statistics of the clips the head trains on.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


BETAS, EPS = (0.9, 0.999), 1e-8          # torch.optim.AdamW's defaults
SMALL_WORK = 2**26                       # multiply-adds per step below which CPU heads run on one thread


@dataclass(frozen=True)
class HeadSpec:
    kind: str                    # "linear" | "mlp"
    hidden: int
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    steps: int
    eval_every: int
    batch_size: int
    multilabel: bool             # BCE + mAP, else CE + accuracy
    seed: int


@dataclass
class Choice:
    lr: float
    weight_decay: float
    steps: int
    valid: float                 # the validation score that chose it


@dataclass
class Sweep:
    best: Choice
    table: list[dict]            # per (lr, wd): best valid score and its step


def _linear_init(fan_in: int, fan_out: int, g: torch.Generator) -> list[torch.Tensor]:
    """nn.Linear's default init drawn from `g`: weight [fan_in, fan_out], bias [fan_out]."""
    bound = 1.0 / math.sqrt(fan_in)
    weight = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound                # [I, O]
    return [weight, (torch.rand(fan_out, generator=g) * 2 - 1) * bound]


class Heads:
    """K heads as batched tensors. The first layer is one matrix [D, K, O] (one GEMM for all heads);
    linear: [D, K, C] + [K, C]; mlp: [D, K, H] + [K, H], then [K, H, C] + [K, C]."""

    def __init__(self, k: int, dim: int, num_classes: int, spec: HeadSpec, device: torch.device):
        g = torch.Generator().manual_seed(spec.seed)
        sizes = [(dim, num_classes)] if spec.kind == "linear" else [(dim, spec.hidden), (spec.hidden, num_classes)]
        one = [t for fi, fo in sizes for t in _linear_init(fi, fo, g)]
        first = one[0].unsqueeze(1).expand(dim, k, one[0].shape[1])               # [D, K, O]
        rest = [t.expand(k, *t.shape) for t in one[1:]]                            # [K, O], [K, H, C], [K, C]
        self.params = [t.to(device).clone().requires_grad_(True) for t in [first, *rest]]
        self.head_axis = [1] + [0] * len(rest)                                     # where K sits in each

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] (shared) -> logits [K, B, C]."""
        w1, b1 = self.params[:2]                                                   # [D, K, O], [K, O]
        D, K, O = w1.shape
        h = (x @ w1.reshape(D, K * O)).view(-1, K, O) + b1                        # [B, K, O]
        if len(self.params) == 4:
            w2, b2 = self.params[2:]                                               # [K, H, C], [K, C]
            h = torch.einsum("bkh,khc->bkc", F.relu(h), w2) + b2                  # [B, K, C]
        return h.transpose(0, 1)                                                   # [K, B, C]


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Sum over heads of each head's mean loss. logits [K, B, C]; y [B] ids or [B, C] multi-hot."""
    K, B, C = logits.shape
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.expand(K, B, C), reduction="sum") / (B * C)
    return F.cross_entropy(logits.reshape(K * B, C), y.repeat(K), reduction="sum") / B


@torch.no_grad()
def _adamw(heads: Heads, state: list[list[torch.Tensor]], step: int, lr: torch.Tensor, wd: torch.Tensor) -> None:
    """One AdamW update with per-head lr / weight decay (lr, wd: [K]), torch.optim.AdamW's formula."""
    b1, b2 = BETAS
    for p, axis, (m, v) in zip(heads.params, heads.head_axis, state):
        shape = [1] * p.dim()
        shape[axis] = -1                                                           # broadcast [K] over p
        p.mul_(1 - (lr * wd).view(shape))
        m.mul_(b1).add_(p.grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (v / (1 - b2 ** step)).sqrt_().add_(EPS)
        p.sub_(lr.view(shape) / (1 - b1 ** step) * m / denom)
        p.grad = None


@contextmanager
def _one_thread_if_small(device: torch.device, work: int):
    """CPU heads of at most SMALL_WORK multiply-adds per step run on one thread: intra-op threads only
    add synchronisation at these sizes (and stall when the cores are shared)."""
    if device.type != "cpu" or work > SMALL_WORK:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_heads(x: torch.Tensor, y: torch.Tensor, settings: list[tuple[float, float]], num_classes: int,
                spec: HeadSpec, steps: int, on_eval=None) -> Heads:
    """Train one head per (lr, weight decay) on standardised x [N, D], y [N] | [N, C] for `steps`
    updates; `on_eval(step, heads)` every spec.eval_every updates and after the last."""
    width = spec.hidden if spec.kind == "mlp" else num_classes
    work = min(x.shape[0], spec.batch_size) * x.shape[1] * len(settings) * width     # first layer, per step
    with _one_thread_if_small(x.device, work):
        return _train_heads(x, y, settings, num_classes, spec, steps, on_eval)


def _train_heads(x: torch.Tensor, y: torch.Tensor, settings: list[tuple[float, float]], num_classes: int,
                 spec: HeadSpec, steps: int, on_eval) -> Heads:
    heads = Heads(len(settings), x.shape[1], num_classes, spec, x.device)
    lr, wd = (torch.tensor([s[i] for s in settings], device=x.device) for i in (0, 1))   # [K]
    state = [[torch.zeros_like(p), torch.zeros_like(p)] for p in heads.params]
    g, n = torch.Generator().manual_seed(spec.seed), x.shape[0]
    for step in range(1, steps + 1):
        idx = torch.randperm(n, generator=g)[: spec.batch_size].to(x.device) if n > spec.batch_size else None
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])                # [B, D], [B] | [B, C]
        _loss(heads(xb), yb, spec.multilabel).backward()
        _adamw(heads, state, step, lr, wd)
        if on_eval is not None and (step % spec.eval_every == 0 or step == steps):
            on_eval(step, heads)
    return heads


def standardise(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """(x - mean) / std with the statistics of `fit` [N, D], applied to every tensor given."""
    mean, std = fit.mean(0, keepdim=True), fit.std(0, keepdim=True).clamp_min(1e-6)   # [1, D]
    return [(t - mean) / std for t in (fit, *others)]


@torch.no_grad()
def probabilities(heads: Heads, x: torch.Tensor, multilabel: bool) -> torch.Tensor:
    logits = heads(x)                                                          # [K, N, C]
    return logits.sigmoid() if multilabel else logits.softmax(-1)


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores [N, C], targets [N, C] in {0, 1} -> AP per class [C] (NaN: no positive clip).
    scikit-learn's average_precision_score (ties grouped), vectorised over classes: the sweep scores
    K heads at every `eval_every` steps, where sklearn's per-class loop would dominate its time."""
    s, order = scores.sort(dim=0, descending=True)                             # [N, C]
    hit = targets.gather(0, order).float()                                     # [N, C] positives in score order
    tp, fp = hit.cumsum(0), (1 - hit).cumsum(0)                                # [N, C]
    last = torch.ones_like(hit, dtype=torch.bool)
    last[:-1] = s[:-1] != s[1:]                                                # last row of each tied block
    tp_last = torch.where(last, tp, torch.zeros_like(tp))
    before = torch.cat([torch.zeros_like(tp[:1]), tp_last.cummax(0).values[:-1]])   # tp at the previous threshold
    npos = hit.sum(0)                                                          # [C]
    ap = (last * (tp - before) * tp / (tp + fp)).sum(0) / npos.clamp_min(1)    # [C]
    return torch.where(npos > 0, ap, torch.full_like(ap, float("nan")))


def head_scores(probs: torch.Tensor, y: torch.Tensor, multilabel: bool) -> list[float]:
    """probs [K, N, C] -> each head's metric: mAP over classes with positives, or accuracy."""
    if multilabel:
        return [float(average_precision(p, y).nanmean()) for p in probs]
    return (probs.argmax(-1) == y).float().mean(1).tolist()                   # [K]


def _targets(y: np.ndarray, multilabel: bool, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.float32 if multilabel else torch.int64, device=device)


def select(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, num_classes: int,
           spec: HeadSpec, device: torch.device = torch.device("cpu")) -> Sweep:
    """Train every (lr, wd) on the training part; the best (lr, wd, step) by the validation score."""
    xt, xv = standardise(torch.as_tensor(x_train, device=device), torch.as_tensor(x_valid, device=device))
    settings = [(lr, wd) for lr in spec.lrs for wd in spec.weight_decays]
    best = [(-np.inf, 0)] * len(settings)                                   # (score, step) per setting

    yv = _targets(y_valid, spec.multilabel, device)

    def on_eval(step: int, heads: Heads) -> None:
        for k, score in enumerate(head_scores(probabilities(heads, xv, spec.multilabel), yv, spec.multilabel)):
            if score > best[k][0]:
                best[k] = (score, step)

    train_heads(xt, _targets(y_train, spec.multilabel, device), settings, num_classes, spec, spec.steps, on_eval)
    table = [{"lr": lr, "weight_decay": wd, "valid": float(s), "steps": st}
             for (lr, wd), (s, st) in zip(settings, best)]
    top = max(table, key=lambda r: r["valid"])                              # first of equals in sweep order
    return Sweep(Choice(top["lr"], top["weight_decay"], top["steps"], top["valid"]), table)


def fit_and_score(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, choice: Choice, num_classes: int,
                  spec: HeadSpec, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """Train the chosen head on (x_fit, y_fit) for its step count; test probabilities [N_test, C]."""
    xf, xt = standardise(torch.as_tensor(x_fit, device=device), torch.as_tensor(x_test, device=device))
    heads = train_heads(xf, _targets(y_fit, spec.multilabel, device), [(choice.lr, choice.weight_decay)],
                        num_classes, spec, choice.steps)
    return probabilities(heads, xt, spec.multilabel)[0].cpu().numpy()       # [N_test, C]
