"""Shared harness of the peer benchmarks: one (library, attack, model) case per fresh Python process.

A case runs in its own subprocess so that its peak memory is its own: after the set-up (imports, model,
data, the library's wrapper, one warm-up forward pass and, with ``warmup_n``, one call of the attack on that
many images) the process's RSS high-water mark is reset
(``/proc/self/clear_refs``), the attack runs over all images in batches, and ``resource.getrusage`` gives
the peak. Every returned example is checked against the threat model (eps + 1e-6 in the attack's norm,
inside [0, 1]), and robust accuracy is recomputed here from the model's predictions on the returned
examples, the same way for every library: robust = clean-correct and still correct after the attack.

Run one case by hand:
    python benchmarks/harness.py --case '{"library": "advrobust", "attack": "fgsm", "model": "RUN_DIR"}'
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
LIBRARIES = ("advrobust", "torchattacks", "art", "foolbox", "reference")
TOLERANCE = 1e-6
RESNET_MODEL = "preact-resnet18-random"
#: l2 budget of the minimum-norm CW attack's "robust accuracy" (counted after the attack, unprojected).
CW_EPS = 2.0


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration, the same for every library that has it."""

    norm: str  # "linf" or "l2"
    eps: float
    settings: str  # what every library is asked to do, in words
    min_norm: bool = False


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("linf", 0.3, "FGSM, linf eps 0.3, no random start"),
    "pgd40-linf": AttackSpec(
        "linf", 0.3, "PGD, linf eps 0.3, 40 steps of 0.01875 (2.5 eps/40), 1 uniform random start"
    ),
    "pgd40-l2": AttackSpec(
        "l2",
        2.0,
        "PGD, l2 eps 2.0, 40 steps of 0.125 (2.5 eps/40), 1 random start (each library its own distribution)",
    ),
    "cw-l2": AttackSpec(
        "l2",
        CW_EPS,
        "CW-L2, 100 Adam steps (ART: 100 of its line-search iterations), lr 0.01, c = 1, 1 binary-search step, "
        "kappa 0, each library's own early abort (ART none); minimum-norm, unprojected: robust accuracy "
        "counts a success only within l2 2.0. foolbox returns an all-zero image for samples it never fooled "
        "(its success rate counts those; robust accuracy within 2.0 does not)",
        min_norm=True,
    ),
    "apgd-ce": AttackSpec(
        "linf", 0.3, "APGD-CE, linf eps 0.3, 100 steps, 1 restart, initial step 2 eps (ART: eps_step 0.6)"
    ),
    "autoattack": AttackSpec(
        "linf",
        0.3,
        "AutoAttack standard, linf eps 0.3: advrobust suite 'standard' via evaluate (APGD-CE, APGD-T DLR x9, "
        "FAB-T x9, Square 5000); torchattacks AutoAttack(version='standard', n_classes=10, seed=0); ART "
        "AutoAttack with its default attack list (APGD-CE and APGD-DLR with 5 restarts and eps_step 0.1, "
        "DeepFool, Square 5000 x 5 restarts)",
    ),
    "autoattack-l2": AttackSpec(
        "l2",
        2.0,
        "AutoAttack standard, l2 eps 2.0: advrobust suite 'standard' (APGD-CE, APGD-T DLR x9, FAB-T x9, Square "
        "5000, all l2); the reference's AutoAttack(norm='L2', version='standard'); torchattacks "
        "AutoAttack(norm='L2', version='standard', n_classes=10, seed=0)",
    ),
    "square": AttackSpec("linf", 0.3, "Square, linf eps 0.3, 1000 queries, p_init 0.8, 1 restart"),
    "autoattack-parts": AttackSpec(
        "linf",
        0.3,
        "torchattacks' AutoAttack-standard attacks as its AutoAttack builds them (APGD-CE, APGD-T, FAB-T with "
        "torchattacks' default 10 steps, Square 5000) run one by one as a cascade on the still-robust samples "
        "of each batch, timed per attack (what its MultiAttack does); advrobust: its standard suite with the "
        "same budget (APGD-CE, APGD-T and FAB-T at 10 steps, Square 5000) via evaluate. Same members and "
        "iterations, not the same step-size schedule: advrobust's APGD halves its step at the paper's "
        "fractions of the steps (at 10: after steps 3, 5, 6, 7, 8, 9), torchattacks' integer rule checks "
        "after step 2 and then every step (at 100 the two agree)",
    ),
    "autoattack-parts-100": AttackSpec(
        "linf",
        0.3,
        "as autoattack-parts but APGD-CE, APGD-T and FAB-T with the reference AutoAttack's 100 steps "
        "(context: not torchattacks' AutoAttack, which uses 10); advrobust: its standard suite, as 'autoattack'",
    ),
    "apgd-ce-only": AttackSpec("linf", 0.3, "advrobust APGD-CE (100 steps, 1 restart) via evaluate"),
    "pgd40-eval": AttackSpec("linf", 0.3, "advrobust PGD-40 (step 0.01875, 1 restart) via evaluate"),
}

#: Which (library, attack) pairs exist; the rest are reported as "n/a".
AVAILABLE: dict[str, set[str]] = {
    "advrobust": set(ATTACKS),
    "torchattacks": {
        "fgsm",
        "pgd40-linf",
        "pgd40-l2",
        "cw-l2",
        "apgd-ce",
        "autoattack",
        "autoattack-l2",
        "square",
        "autoattack-parts",
        "autoattack-parts-100",
    },
    "art": {"fgsm", "pgd40-linf", "pgd40-l2", "cw-l2", "apgd-ce", "autoattack", "square"},
    "foolbox": {"fgsm", "pgd40-linf", "pgd40-l2", "cw-l2"},
    # Croce & Hein's own AutoAttack code (github.com/fra31/auto-attack), packaged on PyPI as pyautoattack.
    "reference": {"autoattack", "autoattack-l2"},
}


#: The AutoAttack-standard cases, one per norm.
AUTOATTACKS = ("autoattack", "autoattack-l2")


def autoattack_norm(spec: AttackSpec) -> str:
    """The norm as the AutoAttack implementations spell it."""
    return "Linf" if spec.norm == "linf" else "L2"


def step_size(spec: AttackSpec, steps: int = 40) -> float:
    return 2.5 * spec.eps / steps


# ----------------------------------------------------------------------------------------------- data


def case_device(case: dict[str, Any]) -> torch.device:
    """The case's device (``"device"``, default the CPU; ``benchmarks/gpu_bench.py`` runs cases on CUDA)."""
    return torch.device(case.get("device", "cpu"))


def load_inputs(case: dict[str, Any]) -> tuple[nn.Module, Tensor, Tensor]:
    """The model (eval mode) and the first ``n`` inputs with their labels, on the case's device."""
    import advrobust

    n = int(case["n"])
    device = case_device(case)
    if case["model"] == RESNET_MODEL:
        # The same network and inputs in every run of the case (runs differ in the attack's seed only).
        data_seed = int(case.get("data_seed", case.get("seed", 0)))
        torch.manual_seed(data_seed)
        model = advrobust.create_model("preact-resnet18", num_classes=10, in_channels=3).eval().to(device)
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(data_seed)).to(device)
        with torch.no_grad():
            # Labels are the model's own predictions: every sample is clean-correct, so no library can
            # skip work on samples that are misclassified to begin with.
            y = torch.cat([model(x[i : i + 64]).argmax(1) for i in range(0, n, 64)])
        return model, x, y
    model = advrobust.load_model(case["model"], device=device).eval()
    test = advrobust.load_dataset("mnist", split="test").take(n)
    x = test.images.to(torch.float32).div(255)
    return model, x.to(device), test.labels.clone().to(device)


# ------------------------------------------------------------------------------------------- adapters

AttackFn = Callable[[Tensor, Tensor], Tensor]


def batched(fn: AttackFn, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    parts = [fn(x[i : i + batch_size], y[i : i + batch_size]).detach() for i in range(0, len(x), batch_size)]
    return torch.cat(parts)


class Recorder:
    """Wraps an advrobust attack inside ``evaluate`` to keep every (x, x_adv, y) it returns, for checks."""

    def __init__(self, attack: Any) -> None:
        self._attack = attack
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attack, name)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor:
        x_adv = self._attack(model, x, y, **kwargs)
        self.calls.append((x, x_adv, y))
        return x_adv


def advrobust_case(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int
) -> tuple[Callable[[], Tensor | None], dict[str, Any]]:
    import advrobust
    from advrobust.attacks import create_attack
    from advrobust.evaluation.suites import build_suite

    spec = ATTACKS[attack]
    threat = advrobust.ThreatModel(norm=spec.norm, eps=spec.eps)
    extra: dict[str, Any] = {}
    if attack in (*AUTOATTACKS, "autoattack-parts", "autoattack-parts-100", "apgd-ce-only", "pgd40-eval"):
        if attack in (*AUTOATTACKS, "autoattack-parts-100"):
            suite = build_suite("standard", threat)
        elif attack == "autoattack-parts":
            # torchattacks' AutoAttack as it ships: the gradient members at 10 iterations, Square unchanged.
            suite = [
                dataclasses.replace(a, steps=10) if "steps" in {f.name for f in dataclasses.fields(a)} else a
                for a in build_suite("standard", threat)
            ]
        elif attack == "apgd-ce-only":
            suite = [create_attack("apgd", threat=threat, loss="ce", steps=100)]
        else:
            suite = [create_attack("pgd", threat=threat, steps=40, step_size=step_size(spec))]
        recorders = [Recorder(a) for a in suite]

        def run_eval() -> None:
            result = advrobust.evaluate(model, (x, y), recorders, threat=threat, batch_size=bs, seed=seed)
            extra["eval"] = result

        extra["recorders"] = recorders
        extra["describe"] = [a.describe() for a in suite]
        return run_eval, extra
    if attack == "fgsm":
        atk = create_attack("fgsm", threat=threat)
    elif attack in ("pgd40-linf", "pgd40-l2"):
        atk = create_attack("pgd", threat=threat, steps=40, step_size=step_size(spec))
    elif attack == "cw-l2":
        # Minimum-norm: a budget of 28 (the l2 diameter of [0, 1]^784) makes the final projection a no-op.
        big = advrobust.ThreatModel(norm="l2", eps=float(x[0].numel()) ** 0.5)
        atk = create_attack(
            "cw", threat=big, steps=100, binary_search_steps=1, initial_const=1.0, step_size=0.01
        )
    elif attack == "apgd-ce":
        atk = create_attack("apgd", threat=threat, loss="ce", steps=100)
    elif attack == "square":
        atk = create_attack("square", threat=threat, queries=1000, p_init=0.8)
    else:
        raise KeyError(attack)
    extra["describe"] = [atk.describe()]
    counter = iter(range(10**6))

    def one(xb: Tensor, yb: Tensor) -> Tensor:
        generator = torch.Generator(device=xb.device).manual_seed(seed * 1000 + next(counter))
        return atk(model, xb, yb, generator=generator)

    return lambda: batched(one, x, y, bs), extra


def torchattacks_case(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    import torchattacks as ta

    spec = ATTACKS[attack]
    if attack == "fgsm":
        atk = ta.FGSM(model, eps=spec.eps)
    elif attack == "pgd40-linf":
        atk = ta.PGD(model, eps=spec.eps, alpha=step_size(spec), steps=40, random_start=True)
    elif attack == "pgd40-l2":
        atk = ta.PGDL2(model, eps=spec.eps, alpha=step_size(spec), steps=40, random_start=True)
    elif attack == "cw-l2":
        atk = ta.CW(model, c=1.0, kappa=0.0, steps=100, lr=0.01)
    elif attack == "apgd-ce":
        atk = ta.APGD(model, norm="Linf", eps=spec.eps, steps=100, n_restarts=1, loss="ce", seed=seed)
    elif attack in AUTOATTACKS:
        atk = ta.AutoAttack(
            model, norm=autoattack_norm(spec), eps=spec.eps, version="standard", n_classes=10, seed=seed
        )
    elif attack == "autoattack-parts":
        return torchattacks_parts(model, x, y, bs, seed, spec.eps, steps=10)
    elif attack == "autoattack-parts-100":
        return torchattacks_parts(model, x, y, bs, seed, spec.eps, steps=100)
    elif attack == "square":
        atk = ta.Square(model, norm="Linf", eps=spec.eps, n_queries=1000, n_restarts=1, p_init=0.8, seed=seed)
    else:
        raise KeyError(attack)
    return lambda: batched(lambda xb, yb: atk(xb, yb), x, y, bs), {"describe": [repr(atk)]}


def torchattacks_parts(
    model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int, eps: float, steps: int
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    """torchattacks' AutoAttack-standard members, as its AutoAttack builds them (its default ``steps`` is 10;
    the reference AutoAttack's is 100), cascaded and timed each."""
    import torchattacks as ta

    common = {"norm": "Linf", "eps": eps, "seed": seed, "n_restarts": 1, "steps": steps}
    parts = [
        ("apgd-ce", ta.APGD(model, loss="ce", **common)),
        ("apgd-t", ta.APGDT(model, n_classes=10, **common)),
        ("fab-t", ta.FAB(model, multi_targeted=True, n_classes=10, **common)),
        ("square", ta.Square(model, norm="Linf", eps=eps, seed=seed, n_queries=5000, n_restarts=1)),
    ]
    extra: dict[str, Any] = {"describe": [repr(a) for _, a in parts]}
    stats = [{"name": name, "attacked": 0, "fooled": 0, "seconds": 0.0} for name, _ in parts]
    extra["parts"] = stats

    def run() -> Tensor:
        out = x.clone()
        for start in range(0, len(x), bs):
            xb, yb = x[start : start + bs], y[start : start + bs]
            with torch.no_grad():
                standing = (model(xb).argmax(1) == yb).nonzero().squeeze(1)
            for (_, atk), stat in zip(parts, stats, strict=True):
                if standing.numel() == 0:
                    break
                tick = time.perf_counter()
                adv = atk(xb[standing], yb[standing]).detach()
                with torch.no_grad():
                    fooled = model(adv).argmax(1) != yb[standing]
                stat["seconds"] += time.perf_counter() - tick
                stat["attacked"] += int(standing.numel())
                stat["fooled"] += int(fooled.sum())
                out[start + standing[fooled]] = adv[fooled]
                standing = standing[~fooled]
        return out

    return run, extra


def art_case(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    from art.attacks import evasion as ev
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)
    spec = ATTACKS[attack]
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.is_cuda else "cpu",
    )
    norm = np.inf if spec.norm == "linf" else 2
    if attack == "fgsm":
        atk = ev.FastGradientMethod(classifier, norm=norm, eps=spec.eps, batch_size=bs)
    elif attack in ("pgd40-linf", "pgd40-l2"):
        atk = ev.ProjectedGradientDescent(
            classifier,
            norm=norm,
            eps=spec.eps,
            eps_step=step_size(spec),
            max_iter=40,
            num_random_init=1,
            batch_size=bs,
            verbose=False,
        )
    elif attack == "cw-l2":
        atk = ev.CarliniL2Method(
            classifier,
            confidence=0.0,
            learning_rate=0.01,
            binary_search_steps=1,
            max_iter=100,
            initial_const=1.0,
            batch_size=bs,
            verbose=False,
        )
    elif attack == "apgd-ce":
        atk = ev.AutoProjectedGradientDescent(
            classifier,
            norm=norm,
            eps=spec.eps,
            eps_step=2 * spec.eps,
            max_iter=100,
            nb_random_init=1,
            batch_size=bs,
            loss_type="cross_entropy",
            verbose=False,
        )
    elif attack == "autoattack":
        atk = ev.AutoAttack(classifier, norm=norm, eps=spec.eps, batch_size=bs)
    elif attack == "square":
        atk = ev.SquareAttack(
            classifier, norm=norm, eps=spec.eps, max_iter=1000, p_init=0.8, nb_restarts=1, batch_size=bs
        )
    else:
        raise KeyError(attack)
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def run() -> Tensor:
        return torch.from_numpy(np.asarray(atk.generate(x=x_np, y=y_np), dtype=np.float32)).to(x.device)

    try:
        described = repr(atk)[:500]
    except RecursionError:  # ART's SquareAttack.__repr__ recurses forever (ART 1.20.1)
        described = type(atk).__name__
    return run, {"describe": [described]}


def foolbox_case(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    import foolbox as fb

    torch.manual_seed(seed)
    spec = ATTACKS[attack]
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    epsilons: float | None = spec.eps
    if attack == "fgsm":
        atk = fb.attacks.FGSM()
    elif attack == "pgd40-linf":
        atk = fb.attacks.LinfPGD(steps=40, abs_stepsize=step_size(spec), random_start=True)
    elif attack == "pgd40-l2":
        atk = fb.attacks.L2PGD(steps=40, abs_stepsize=step_size(spec), random_start=True)
    elif attack == "cw-l2":
        atk = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=1,
            steps=100,
            stepsize=0.01,
            confidence=0.0,
            initial_const=1.0,
            abort_early=True,
        )
        epsilons = None
    else:
        raise KeyError(attack)

    def one(xb: Tensor, yb: Tensor) -> Tensor:
        _, clipped, _ = atk(fmodel, xb, yb, epsilons=epsilons)
        return clipped.detach()

    return lambda: batched(one, x, y, bs), {"describe": [repr(atk)]}


def reference_case(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, bs: int, seed: int
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    """The reference AutoAttack (Croce & Hein's code, PyPI ``pyautoattack``), version 'standard' as shipped:
    APGD-CE, APGD-T (9 targets), FAB-T (9 targets), all 100 iterations, Square 5,000 queries, on the samples
    still robust, with its own checks of the model first."""
    import logging

    from pyautoattack import AutoAttack

    if attack not in AUTOATTACKS:
        raise KeyError(attack)
    spec = ATTACKS[attack]
    norm = autoattack_norm(spec)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    atk = AutoAttack(model, norm=norm, eps=spec.eps, version="standard", seed=seed, device=x.device)
    describe = [
        f"pyautoattack AutoAttack(version='standard', norm={norm!r}, eps={spec.eps}): "
        + ", ".join(atk.attacks_to_run)
        + f"; apgd n_iter {atk.apgd.n_iter}, apgd-t n_iter {atk.apgd_targeted.n_iter} x "
        + f"{atk.apgd_targeted.n_target_classes} targets, fab-t n_iter {atk.fab.n_iter} x "
        + f"{atk.fab.n_target_classes} targets, square {atk.square.n_queries} queries"
    ]

    def run() -> Tensor:
        x_adv, _ = atk.run_standard_evaluation(x, y, batch_size=bs)
        return x_adv

    return run, {"describe": describe}


ADAPTERS = {
    "advrobust": advrobust_case,
    "torchattacks": torchattacks_case,
    "art": art_case,
    "foolbox": foolbox_case,
    "reference": reference_case,
}

# -------------------------------------------------------------------------------------------- metrics


def predict(model: nn.Module, x: Tensor, bs: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])


def distances(x_adv: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    delta = (x_adv.double() - x.double()).flatten(1)
    return delta.abs().amax(1), delta.norm(dim=1)


def violations(x_adv: Tensor, x: Tensor, spec: AttackSpec) -> dict[str, Any]:
    """Examples outside the eps-ball (eps + 1e-6 in the attack's norm) or outside [0, 1]."""
    linf, l2 = distances(x_adv, x)
    dist = linf if spec.norm == "linf" else l2
    flat = x_adv.flatten(1)
    out_of_bounds = (flat < 0).any(1) | (flat > 1).any(1) | ~torch.isfinite(flat).all(1)
    return {
        "checked": len(x),
        "eps_violations": None if spec.min_norm else int((dist > spec.eps + TOLERANCE).sum()),
        "bounds_violations": int(out_of_bounds.sum()),
        "max_distance": float(dist.max()) if len(x) else 0.0,
    }


def current_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    library, attack = case["library"], case["attack"]
    threads, bs, seed = int(case.get("threads", 2)), int(case["batch_size"]), int(case.get("seed", 0))
    torch.set_num_threads(threads)
    if case.get("eps") is not None:
        # Another budget for this case: every adapter reads ATTACKS (a process of its own per case here;
        # benchmarks/gpu_bench.py, which runs cases in one process, never sets eps).
        base = ATTACKS[attack]
        ATTACKS[attack] = dataclasses.replace(
            base, eps=float(case["eps"]), settings=f"{base.settings} [eps set to {case['eps']}]"
        )
    spec = ATTACKS[attack]
    out: dict[str, Any] = {**case, "settings": spec.settings, "norm": spec.norm, "eps": spec.eps}
    if attack not in AVAILABLE[library]:
        return {**out, "status": "n/a"}
    model, x, y = load_inputs(case)

    def seed_everything() -> None:
        # Every library's global RNGs get this run's seed (torchattacks and foolbox draw random starts from
        # torch's, ART from numpy's); advrobust gets it through its generators.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    warmup_n = min(int(case.get("warmup_n", 0)), len(x))
    if warmup_n > 0:
        # The same attack once on the first images, in every library, before the measurement: the first
        # backward's set-up and the code pages of the kernels the library calls (file-backed pages of
        # libtorch, 5-9 MB on the MNIST models, more the more distinct kernels) are paid here, so that the
        # peak RSS rise is the attack's own working memory. ``warmup_n`` 0 measures them too.
        seed_everything()
        warm, warm_extra = ADAPTERS[library](attack, model, x[:warmup_n], y[:warmup_n], bs, seed)
        warm()
        del warm, warm_extra  # its recorders and results too
        out["warmup_n"] = warmup_n
    seed_everything()
    fn, extra = ADAPTERS[library](attack, model, x, y, bs, seed)
    clean_pred = predict(model, x, bs)  # also the warm-up pass
    clean_ok = clean_pred == y
    gc.collect()
    device = case_device(case)
    cuda_before = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    rss_before = current_rss_kb()
    reset = reset_peak_rss()
    tick = time.perf_counter()
    x_adv = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        # The attack's own device memory: the peak over what was allocated before it (model and inputs).
        out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    seconds = time.perf_counter() - tick
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.update(
        status="ok",
        describe=extra.get("describe"),
        seconds=seconds,
        images_per_second=len(x) / seconds,
        peak_rss_mb=peak / 1024,
        peak_rss_delta_mb=(peak - rss_before) / 1024 if reset else None,
        clean_accuracy=float(clean_ok.float().mean()),
        clean_correct=int(clean_ok.sum()),
    )
    if "eval" in extra:  # advrobust through evaluate: the returned examples are the recorded ones
        result = extra["eval"]
        calls = [c for r in extra["recorders"] for c in r.calls]
        xs = torch.cat([c[0] for c in calls]) if calls else x[:0]
        advs = torch.cat([c[1] for c in calls]) if calls else x[:0]
        ys = torch.cat([c[2] for c in calls]) if calls else y[:0]
        fooled_here = int((predict(model, advs, bs) != ys).sum()) if calls else 0
        robust_flags = torch.tensor(result.robust_correct, dtype=torch.bool)
        out.update(violations(advs, xs, spec))
        out["robust_correct"] = int(robust_flags.sum())
        out["robust_accuracy"] = float(robust_flags.float().mean())
        out["robust_flags"] = "".join("1" if f else "0" for f in robust_flags.tolist())
        out["library_reported_violations"] = sum(a.violations for a in result.attacks)
        out["recheck_fooled"] = fooled_here
        out["recheck_consistent"] = fooled_here == int(clean_ok.sum()) - int(robust_flags.sum())
        out["per_attack"] = [
            {
                "name": a.name,
                "attacked": a.attacked,
                "fooled": a.fooled,
                "seconds": a.seconds,
                "accuracy": a.accuracy.value,
            }
            for a in result.attacks
        ]
        return out
    assert x_adv is not None
    if "parts" in extra:
        out["per_attack"] = extra["parts"]
    adv_ok = predict(model, x_adv, bs) == y
    robust_flags = clean_ok & adv_ok
    out.update(violations(x_adv, x, spec))
    if spec.min_norm:
        _, l2 = distances(x_adv, x)
        success = clean_ok & ~adv_ok
        within = success & (l2 <= spec.eps + TOLERANCE)
        robust_flags = clean_ok & ~within
        n_clean = max(1, int(clean_ok.sum()))
        out["success_rate"] = int(success.sum()) / n_clean
        out["mean_l2_success"] = float(l2[success].mean()) if bool(success.any()) else None
        out["median_l2_success"] = float(l2[success].median()) if bool(success.any()) else None
        # Per image: the l2 distance where the attack succeeded, else None (compare_attacks compares libraries
        # on the images both fooled).
        out["l2_success"] = [
            round(d, 7) if s else None for d, s in zip(l2.tolist(), success.tolist(), strict=True)
        ]
    out["robust_correct"] = int(robust_flags.sum())
    out["robust_accuracy"] = float(robust_flags.float().mean())
    out["robust_flags"] = "".join("1" if f else "0" for f in robust_flags.tolist())
    return out


# ---------------------------------------------------------------------------------------- subprocess


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def run_in_subprocess(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``case`` in a fresh interpreter; a crash or timeout is reported, not raised."""
    if case["attack"] not in AVAILABLE[case["library"]]:
        return {**case, "status": "n/a"}
    command = [sys.executable, str(HERE / "harness.py"), "--case", json.dumps(case)]
    tick = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=thread_env(int(case.get("threads", 2))),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**case, "status": "timeout", "timeout_s": timeout}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {**case, "status": "error", "error": tail, "process_seconds": time.perf_counter() - tick}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_seconds"] = time.perf_counter() - tick
    return result


def case_key(case: dict[str, Any]) -> tuple[str, str, str, int]:
    return (case["library"], case["attack"], case.get("model_name", case["model"]), int(case["n"]))


class Runner:
    """Runs cases in fresh processes, each after waiting for a quiet machine, in ``rounds`` passes.

    Pass 2 runs the cases in reverse order (so drifting background load hits both sides of a comparison;
    the libraries in ``once`` are left out of it), and in the first pass a case faster than ``repeat_under`` seconds is run ``repeats`` times. A case's
    reported time is the minimum over its runs: other processes on a shared machine only ever add time.
    Run k of a case uses seed + k; its robust accuracy is reported per run and as their mean, its peak RSS
    rise as the median run's.
    Every run's time and the 1-minute load before and after it are kept in ``runs``.
    """

    def __init__(
        self,
        *,
        timeout: float,
        rounds: int = 1,
        repeat_under: float = 30.0,
        repeats: int = 3,
        max_load: float = 1.5,
        load_tries: int = 10,
        load_pause: float = 30.0,
        on_update: Callable[[list[dict[str, Any]]], None] | None = None,
        once: tuple[str, ...] = (),
    ) -> None:
        self.once_libraries = set(once)
        self.timeout, self.rounds = timeout, rounds
        self.repeat_under, self.repeats = repeat_under, repeats
        self.max_load, self.load_tries, self.load_pause = max_load, load_tries, load_pause
        self.on_update = on_update
        self.runs: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
        self.order: list[dict[str, Any]] = []

    def once(self, case: dict[str, Any]) -> dict[str, Any]:
        if case["attack"] not in AVAILABLE[case["library"]]:
            return {**case, "status": "n/a"}
        # Run k of a case uses seed + k in every library, so repeats of a randomised attack sample its
        # spread (a single draw of PGD-40 l2 on 1,000 MNIST images moves by up to ~1.5 points).
        base = int(case.get("seed", 0))
        case = {**case, "data_seed": base, "seed": base + len(self.runs.get(case_key(case), []))}
        load = wait_for_quiet(self.max_load, self.load_tries, self.load_pause)
        name = f"{case.get('model_name', case['model'])} {case['library']} {case['attack']} n={case['n']}"
        print(f"- {name} (load {load:.2f}) ...", flush=True)
        tick = time.perf_counter()
        result = run_in_subprocess(case, self.timeout)
        result["load_before"] = load
        result["load_after"] = load_avg()[0]
        print(f"  {brief(result)} [{time.perf_counter() - tick:.0f} s]", flush=True)
        return result

    def run_all(self, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for case in cases:
            if case_key(case) not in self.runs:
                self.order.append(case)
                self.runs[case_key(case)] = []
        for round_index in range(self.rounds):
            todo = cases if round_index % 2 == 0 else list(reversed(cases))
            for case in todo:
                runs = self.runs[case_key(case)]
                if runs and (runs[0].get("status") == "n/a" or case["library"] in self.once_libraries):
                    continue
                runs.append(self.once(case))
                if (
                    round_index == 0
                    and runs[-1].get("status") == "ok"
                    and runs[-1]["seconds"] < self.repeat_under
                ):
                    for _ in range(self.repeats - 1):
                        runs.append(self.once(case))  # each with the next seed
                if self.on_update is not None:
                    self.on_update(self.merged())
        return self.merged()

    def merged(self) -> list[dict[str, Any]]:
        out = []
        for case in self.order:
            runs = self.runs[case_key(case)]
            if not runs:
                continue
            ok = [r for r in runs if r.get("status") == "ok"]
            if not ok:
                out.append(runs[-1])
                continue
            chosen = dict(min(ok, key=lambda r: r["seconds"]))
            chosen["timing"] = f"min of {len(ok)} run(s)"
            chosen["runs"] = [
                {
                    "status": r.get("status"),
                    "seconds": r.get("seconds"),
                    "load_before": r.get("load_before"),
                    "load_after": r.get("load_after"),
                    "seed": r.get("seed"),
                    "robust_correct": r.get("robust_correct"),
                    "robust_flags": r.get("robust_flags"),
                    "peak_rss_delta_mb": r.get("peak_rss_delta_mb"),
                }
                for r in runs
            ]
            chosen["accuracy_consistent"] = len({r["robust_correct"] for r in ok}) == 1
            rises = sorted(r["peak_rss_delta_mb"] for r in ok if r.get("peak_rss_delta_mb") is not None)
            if rises:
                # The same case's peak RSS rise moves by tens of MB between processes (allocator state):
                # report the median run's, not the fastest run's.
                chosen["peak_rss_delta_mb_fastest_run"] = chosen.get("peak_rss_delta_mb")
                chosen["peak_rss_delta_mb"] = statistics.median(rises)
            chosen["robust_accuracy_runs"] = [r["robust_accuracy"] for r in ok]
            chosen["robust_accuracy_mean"] = sum(chosen["robust_accuracy_runs"]) / len(ok)
            out.append(chosen)
        return out


def timing(c: dict[str, Any]) -> str:
    """ "min of 2 run(s): 80.1, 95.3" for a table cell."""
    seconds = [r["seconds"] for r in c.get("runs", []) if r.get("seconds") is not None]
    return f"{c.get('timing', '')}: " + ", ".join(f"{v:.1f}" for v in seconds) if seconds else ""


def brief(r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {str(r.get('error', ''))[-300:]}"
    extra = ""
    if r.get("success_rate") is not None:
        extra = f", success {r['success_rate']:.1%} mean L2 {fmt(r.get('mean_l2_success'), '.3f')}"
    return (
        f"{r['images_per_second']:.1f} img/s ({r['seconds']:.1f} s), robust {r['robust_accuracy']:.1%} "
        f"(clean {r['clean_accuracy']:.1%}){extra}, violations eps {r['eps_violations']} bounds "
        f"{r['bounds_violations']}, peak RSS +{fmt(r.get('peak_rss_delta_mb'), '.0f')} MB"
    )


def add_runner_args(parser: argparse.ArgumentParser, timeout: float, rounds: int) -> None:
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per case before it is killed")
    parser.add_argument(
        "--rounds", type=int, default=rounds, help="passes over all cases, the second in reverse order"
    )
    parser.add_argument(
        "--repeat-under",
        type=float,
        default=30.0,
        help="in the first pass, a case faster than this many seconds is run --repeats times",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--once",
        action="append",
        default=[],
        choices=LIBRARIES,
        help="run this library's cases in the first pass only (e.g. art, whose AutoAttack takes ~30 min)",
    )
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load below this")
    parser.add_argument("--load-tries", type=int, default=10, help="times to wait --load-pause for it")
    parser.add_argument("--load-pause", type=float, default=30.0)


def runner_from_args(
    args: argparse.Namespace, on_update: Callable[[list[dict[str, Any]]], None] | None
) -> Runner:
    return Runner(
        timeout=args.timeout,
        rounds=args.rounds,
        repeat_under=args.repeat_under,
        repeats=args.repeats,
        max_load=args.max_load,
        load_tries=args.load_tries,
        load_pause=args.load_pause,
        on_update=on_update,
        once=tuple(args.once),
    )


def load_avg() -> tuple[float, float, float]:
    return os.getloadavg()


def wait_for_quiet(limit: float, tries: int, pause: float) -> float:
    """Wait (up to ``tries`` x ``pause`` seconds) for the 1-minute load to fall below ``limit``."""
    for _ in range(tries):
        load = load_avg()[0]
        if load < limit:
            return load
        print(f"  load {load:.2f} >= {limit}: waiting {pause:.0f} s", flush=True)
        time.sleep(pause)
    return load_avg()[0]


def machine() -> dict[str, Any]:
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in (
        "torch",
        "advrobust",
        "torchattacks",
        "adversarial-robustness-toolbox",
        "foolbox",
        "pyautoattack",
        "numpy",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "../src"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        out["advrobust_commit"] = commit + (" (src/ has uncommitted changes)" if dirty else "")
    except OSError:
        pass
    return out


def fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", required=True, help="the case as JSON")
    args = parser.parse_args()
    case = json.loads(args.case)
    case.setdefault("n", 1000)
    case.setdefault("batch_size", 250)
    print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
    main()
