"""Evaluate a model: clean accuracy, then robust accuracy as the worst case over attacks, per sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack
from advrobust.contract import check_inputs, check_labels, check_outputs, eval_mode
from advrobust.errors import ConfigError, InputError
from advrobust.evaluation.results import Accuracy, AttackResult, EvalResult
from advrobust.threat import ThreatModel

Batches = Iterable[tuple[Tensor, Tensor]]
ProgressFn = Callable[[int, int], None]


def _batches(data: Any, batch_size: int, device: torch.device) -> tuple[Batches, int]:
    """Accept an (x, y) pair of tensors, an ImageDataset, or any iterable of (x, y) batches."""
    from advrobust.data import BatchLoader, ImageDataset

    if isinstance(data, ImageDataset):
        return BatchLoader(data, batch_size=batch_size, device=device), len(data)
    if isinstance(data, BatchLoader):
        return data, data.num_samples
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise InputError(f"{x.shape[0]} inputs but {y.shape[0]} labels: pass one label per input")
        chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return chunks, x.shape[0]
    if isinstance(data, Iterable):
        return data, -1
    raise InputError(
        f"cannot evaluate on {type(data).__name__}: pass (x, y) tensors, an ImageDataset or batches of (x, y)"
    )


def _time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Sequence[Attack],
    *,
    threat: ThreatModel | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    cascade: bool = True,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
    meta: dict[str, Any] | None = None,
) -> EvalResult:
    """Clean accuracy and robust accuracy (worst case over ``attacks`` per sample) of ``model`` on ``data``.

    With ``cascade`` each attack runs only on the samples that every earlier attack failed to break (the
    robust accuracy is the same, the cost lower); without it each attack runs on every clean-correct sample
    and its own accuracy is reported. Attack ``i`` draws its randomness from a generator seeded with
    ``seed + i``, so a seed (with the same batch size) reproduces the result.
    Shape: data yields x (B, C, H, W) floats in threat.bounds and y (B,) int64.
    """
    if not attacks:
        raise ConfigError("no attacks given: pass at least one, e.g. [PGD(threat=ThreatModel(eps=0.3))]")
    threat = threat or attacks[0].threat
    for attack in attacks:
        if attack.threat != threat:
            raise ConfigError(
                f"attack {attack.describe()} uses {attack.threat} but the evaluation uses {threat}: "
                "robust accuracy is a worst case under one threat model, give every attack the same one"
            )
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    batches, total = _batches(data, batch_size, device)
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(len(attacks))]

    clean_parts: list[Tensor] = []
    robust_parts: list[Tensor] = []
    broken_parts: list[Tensor] = []
    per_attack_correct = [0] * len(attacks)
    attacked = [0] * len(attacks)
    fooled = [0] * len(attacks)
    violations = [0] * len(attacks)
    attack_seconds = [0.0] * len(attacks)
    clean_seconds = 0.0
    done = 0
    start = _time()
    num_classes: int | None = None
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            check_inputs(x, threat.bounds)
            check_labels(y, x.shape[0], num_classes)
            tick = _time()
            with torch.no_grad():
                logits = model(x)
            if num_classes is None:
                check_outputs(logits, x.shape[0])
                num_classes = logits.shape[1]
                check_labels(y, x.shape[0], num_classes)
            clean_seconds += _time() - tick
            clean_ok = logits.argmax(dim=1) == y
            robust_ok = clean_ok.clone()
            broken = torch.where(clean_ok, -1, -2)
            for i, attack in enumerate(attacks):
                todo = robust_ok if cascade else clean_ok
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                tick = _time()
                x_adv = attack(model, x[idx], y[idx], generator=generators[i], check=False)
                with torch.no_grad():
                    survived = model(x_adv).argmax(dim=1) == y[idx]
                attack_seconds[i] += _time() - tick
                violations[i] += int((~threat.contains(x_adv, x[idx])).sum())
                attacked[i] += idx.numel()
                newly = idx[~survived & robust_ok[idx]]
                fooled[i] += newly.numel()
                broken[newly] = i
                robust_ok[idx[~survived]] = False
                per_attack_correct[i] += int(survived.sum())
            clean_parts.append(clean_ok.cpu())
            robust_parts.append(robust_ok.cpu())
            broken_parts.append(broken.cpu())
            done += x.shape[0]
            if progress is not None:
                progress(done, total)
    seconds = _time() - start
    if done == 0:
        raise InputError("the data yielded no samples: pass a non-empty data set")

    clean_correct = torch.cat(clean_parts)
    robust_correct = torch.cat(robust_parts)
    n = clean_correct.numel()
    results: list[AttackResult] = []
    cumulative = clean_correct.clone()
    broken_all = torch.cat(broken_parts)
    for i, attack in enumerate(attacks):
        if cascade:
            cumulative &= broken_all != i
            correct = int(cumulative.sum())
        else:
            correct = per_attack_correct[i]
        results.append(
            AttackResult(
                name=attack.name,
                params=attack.params(),
                accuracy=Accuracy(correct, n, confidence),
                attacked=attacked[i],
                fooled=fooled[i],
                seconds=attack_seconds[i],
                violations=violations[i],
            )
        )
    return EvalResult(
        threat=threat.to_dict(),
        clean=Accuracy(int(clean_correct.sum()), n, confidence),
        robust=Accuracy(int(robust_correct.sum()), n, confidence),
        attacks=results,
        clean_correct=clean_correct.tolist(),
        robust_correct=robust_correct.tolist(),
        broken_by=broken_all.tolist(),
        seconds=seconds,
        clean_seconds=clean_seconds,
        seed=seed,
        cascade=cascade,
        meta=dict(meta or {}),
    )
