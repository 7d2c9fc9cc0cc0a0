"""advrobust's adversarial training vs adversarial-robustness-toolbox's trainers: seconds per epoch, peak memory.

Issue 8, item 2 (issue 4's goal: advrobust's fast-at / pgd-at epoch at least 1.5x faster than ART's). Every
case trains the same small-cnn (``benchmarks/train_models.py``'s architecture, seed 0, no normalization) on the
same first ``--n`` MNIST training images (default 10,000), batch ``--batch-size`` (100), Adam lr 1e-3, linf
eps 0.3, the same threads, for one timed epoch after a one-epoch warm-up on the first ``--warmup-n`` images:

| method | advrobust | ART |
|---|---|---|
| fast-at | ``FastAT(step_size=0.375, guard=False)`` | ``AdversarialTrainerFBFPyTorch(eps=0.3)`` |
| fast-at-guard | ``FastAT(step_size=0.375)``: the default, with its overfitting guard | (ART has none) |
| pgd-at | ``PGDAT(steps=7, step_size=2.5 * 0.3 / 7)`` | ``AdversarialTrainer(PGD(same), ratio=1.0)`` |
| pgd-at-madry | - | ``AdversarialTrainerMadryPGD`` as is (its PGD's own batch of 32) |
| trades | ``TRADES(beta=6, steps=10, step_size=0.075)`` | ``AdversarialTrainerTRADESPyTorch(PGD-10 of 0.075, beta 6)`` |

fast-at also runs as ``plain``: the same algorithm written as a bare PyTorch loop (no library, no trainer:
the batch indexed from a float tensor, the uniform start, one input gradient through advrobust's
``fast_input_gradients``, the signed step and projections, one training step of the fused Adam with the
first layer's weight gradient through ``fast_weight_gradients``), i.e. advrobust's kernels without its
trainer: what the trainer costs on top. The summary prints both libraries against it.

advrobust trains through ``advrobust.training.train`` with ``robust_val=0`` (the default holds 500 images out
and attacks them with APGD-CE-20 after each epoch: ``--robust-val-default`` keeps it). What each ART trainer does
per batch (read from ART 1.20.1's source) and where it differs from advrobust is in ``DIFFERENCES`` below and
in the JSON.

Each case runs in a fresh process (``python compare_training.py --case JSON``): after the set-up and the
warm-up epoch, the RSS high-water mark is reset (``harness.reset_peak_rss``) and the epoch is timed. Cases run
in ``--rounds`` rounds; within a method the library order alternates between rounds. A case's time is the
minimum over its rounds (other processes only add time); every run's time and load are kept. Memory: the
process's peak RSS (set-up included: ART holds the float copy of the images) and the rise of the peak during
the timed epoch over the RSS before it (a few MB for this model and batch; noise at that scale).

Usage:
    ADVROBUST_DATA=/path/to/data python benchmarks/compare_training.py --threads 1 --out training.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
EPS = 0.3
PGD_STEPS, PGD_STEP_SIZE = 7, 2.5 * EPS / 7
TRADES_STEPS, TRADES_STEP_SIZE, TRADES_BETA = 10, EPS / 4, 6.0
FAST_STEP_SIZE = 1.25 * EPS

METHODS: dict[str, tuple[str, ...]] = {
    "fast-at": ("advrobust", "art", "plain"),
    "fast-at-guard": ("advrobust",),
    "pgd-at": ("advrobust", "art"),
    "pgd-at-madry": ("art",),
    "trades": ("advrobust", "art"),
}

DIFFERENCES: dict[str, str] = {
    "fast-at": (
        "Both: x + U(-eps, eps) unclipped, one input gradient there (eval mode), a 1.25 eps signed step, "
        "projection to the eps-ball and [0, 1], then one training forward/backward on the adversarial batch "
        "only. ART additionally clips the gradient norm to 0.5 and sets its own cyclic lr (0 -> 0.21 -> 0) on "
        "the optimizer every step (cheap); its training forward runs in eval mode (no effect on this model), "
        "its attack gradient goes through numpy (loss_gradient) and back. advrobust's guard is off here "
        "(fast-at-guard has it: PGD-10 on 512 training images after the epoch)."
    ),
    "pgd-at": (
        "Both: uniform random start in the eps-ball, 7 signed steps of 2.5 eps / 7 on the cross-entropy with "
        "the true labels (eval mode), projection each step, then training on the last iterate only (ART "
        "ratio=1.0: every sample of the batch replaced). ART's PGD also runs compute_success at the end of "
        "every generate() (a forward pass of the clean and of the adversarial batch, for a log line), and "
        "its PyTorchClassifier.fit converts the batch numpy -> torch. pgd-at-madry: ART's "
        "AdversarialTrainerMadryPGD as shipped, whose PGD splits each training batch into attack batches "
        "of 32 (its default), otherwise the same."
    ),
    "trades": (
        "Not the same inner maximisation: advrobust's TRADES ascends the KL(f(x) || f(x')) from "
        "x + 0.001 N(0, 1) as in Zhang et al.'s code (one extra no-grad clean forward for the KL target); "
        "ART's TRADES trainer takes an evasion attack, here its PGD (cross-entropy with the true labels, "
        "uniform random start), 10 steps of 0.075 each. Same number of attack forward/backward passes; the "
        "outer loss is the same (CE(f(x), y) + 6 KL(f(x) || f(x'))), ART clamps the clean softmax at 1e-8. "
        "ART's PGD runs compute_success (two forward passes) per batch."
    ),
}
DIFFERENCES["fast-at-guard"] = DIFFERENCES["fast-at"]
DIFFERENCES["pgd-at-madry"] = DIFFERENCES["pgd-at"]


# --------------------------------------------------------------------------------------------- child


def load_train(n: int) -> Any:
    import advrobust

    return advrobust.load_dataset("mnist", split="train").take(n)


def make_model() -> nn.Module:
    import advrobust

    torch.manual_seed(0)
    return advrobust.create_model("small-cnn", num_classes=10, in_channels=1)


def advrobust_epoch(case: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(warm-up, timed epoch) closures for advrobust."""
    from advrobust import ThreatModel
    from advrobust.training import TrainConfig, create_objective, train

    threat = ThreatModel(norm="linf", eps=EPS)
    method = case["method"]
    if method in ("fast-at", "fast-at-guard"):
        objective = create_objective(
            "fast-at", threat=threat, step_size=FAST_STEP_SIZE, guard=method == "fast-at-guard"
        )
    elif method == "pgd-at":
        objective = create_objective("pgd-at", threat=threat, steps=PGD_STEPS, step_size=PGD_STEP_SIZE)
    else:
        objective = create_objective(
            "trades", threat=threat, beta=TRADES_BETA, steps=TRADES_STEPS, step_size=TRADES_STEP_SIZE
        )
    model = make_model()
    data = load_train(int(case["n"]))
    warm = data.take(int(case["warmup_n"]))
    config = TrainConfig(
        epochs=1,
        batch_size=int(case["batch_size"]),
        optimizer="adam",
        lr=1e-3,
        schedule="constant",
        seed=0,
        robust_val=None if case.get("robust_val_default") else 0,
        select="last",
    )
    return (
        lambda: train(model, warm, objective=objective, config=config),
        lambda: train(model, data, objective=objective, config=config),
    )


def art_epoch(case: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(warm-up, timed epoch) closures for ART."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import (
        AdversarialTrainer,
        AdversarialTrainerFBFPyTorch,
        AdversarialTrainerMadryPGD,
        AdversarialTrainerTRADESPyTorch,
    )
    from art.estimators.classification import PyTorchClassifier

    model = make_model()
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    data = load_train(int(case["n"]))
    x = data.images.to(torch.float32).div(255).numpy()
    y = np.eye(10, dtype=np.float32)[data.labels.numpy()]  # one-hot: FBF's label reduction expects it
    bs, warm_n = int(case["batch_size"]), int(case["warmup_n"])
    method = case["method"]

    def pgd(steps: int, step_size: float, batch_size: int = bs) -> Any:
        return ProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=EPS,
            eps_step=step_size,
            max_iter=steps,
            num_random_init=1,
            batch_size=batch_size,
            verbose=False,
        )

    fit: Callable[[np.ndarray, np.ndarray], None]
    if method == "fast-at":
        fbf = AdversarialTrainerFBFPyTorch(classifier, eps=EPS)
        fit = lambda xs, ys: fbf.fit(xs, ys, batch_size=bs, nb_epochs=1)  # noqa: E731
    elif method == "pgd-at":
        trainer = AdversarialTrainer(classifier, pgd(PGD_STEPS, PGD_STEP_SIZE), ratio=1.0)
        fit = lambda xs, ys: trainer.fit(xs, ys, batch_size=bs, nb_epochs=1)  # noqa: E731
    elif method == "pgd-at-madry":
        madry = AdversarialTrainerMadryPGD(
            classifier, nb_epochs=1, batch_size=bs, eps=EPS, eps_step=PGD_STEP_SIZE, max_iter=PGD_STEPS
        )
        fit = lambda xs, ys: madry.fit(xs, ys)  # noqa: E731
    else:
        trades = AdversarialTrainerTRADESPyTorch(
            classifier, pgd(TRADES_STEPS, TRADES_STEP_SIZE), beta=TRADES_BETA
        )
        fit = lambda xs, ys: trades.fit(xs, ys, batch_size=bs, nb_epochs=1)  # noqa: E731
    return (lambda: fit(x[:warm_n], y[:warm_n]), lambda: fit(x, y))


def plain_epoch(case: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(warm-up, timed epoch) closures for Fast-AT as a bare PyTorch loop (the ``plain`` reference)."""
    import torch.nn.functional as F

    from advrobust.cpu_grad import fast_input_gradients, fast_weight_gradients

    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    data = load_train(int(case["n"]))
    images, labels = data.images.to(torch.float32).div(255), data.labels
    bs, warm_n = int(case["batch_size"]), int(case["warmup_n"])
    generator = torch.Generator().manual_seed(0)

    def epoch(n: int) -> None:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, bs):
            rows = order[start : start + bs]
            x, y = images[rows], labels[rows]
            noise = torch.rand(x.shape, generator=generator)
            x_adv = (x + (2 * noise - 1) * EPS).requires_grad_(True)
            model.eval()
            with fast_input_gradients(model):
                (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            step = x_adv.detach() + FAST_STEP_SIZE * grad.sign()
            x_adv = torch.minimum(torch.maximum(step, x - EPS), x + EPS).clamp(0, 1)
            model.train()
            with fast_weight_gradients(model):
                loss = F.cross_entropy(model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return (lambda: epoch(warm_n), lambda: epoch(len(data)))


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(int(case["threads"]))
    build = {"advrobust": advrobust_epoch, "art": art_epoch, "plain": plain_epoch}[case["library"]]
    warmup, epoch = build(case)
    warmup()
    gc.collect()
    rss_before = harness.current_rss_kb()
    reset = harness.reset_peak_rss()
    tick = time.perf_counter()
    epoch()
    seconds = time.perf_counter() - tick
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **case,
        "status": "ok",
        "seconds": seconds,
        "images_per_second": int(case["n"]) / seconds,
        "peak_rss_mb": peak / 1024,
        "peak_rss_delta_mb": (peak - rss_before) / 1024 if reset else None,
        "torch_threads": torch.get_num_threads(),
    }


# -------------------------------------------------------------------------------------------- parent


def run_in_subprocess(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    tick = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=harness.thread_env(int(case["threads"])),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**case, "status": "timeout", "timeout_s": timeout}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**case, "status": "error", "error": (proc.stderr or proc.stdout)[-2000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_seconds"] = time.perf_counter() - tick
    return result


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (threads, method, library): the fastest run, with every run's time and load."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["threads"], r["method"], r["library"]) for r in runs}, key=str)
    for threads, method, library in keys:
        mine = [r for r in runs if (r["threads"], r["method"], r["library"]) == (threads, method, library)]
        ok = [r for r in mine if r.get("status") == "ok"]
        best = dict(min(ok, key=lambda r: r["seconds"])) if ok else dict(mine[-1])
        best["runs"] = [
            {k: r.get(k) for k in ("status", "seconds", "peak_rss_delta_mb", "load_before", "load_after")}
            for r in mine
        ]
        out.append(best)
    return out


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """advrobust speed / ART speed (= ART seconds / advrobust seconds) per method and thread count."""
    by = {(s["threads"], s["method"], s["library"]): s for s in summary if s.get("status") == "ok"}
    pairs = [
        ("fast-at", "fast-at"),
        ("fast-at-guard", "fast-at"),
        ("pgd-at", "pgd-at"),
        ("pgd-at", "pgd-at-madry"),
        ("trades", "trades"),
    ]
    out = []
    for threads in sorted({s["threads"] for s in summary}):
        for ours, theirs in pairs:
            a, b = by.get((threads, ours, "advrobust")), by.get((threads, theirs, "art"))
            if a is None or b is None:
                continue
            out.append(
                {
                    "threads": threads,
                    "advrobust": ours,
                    "art": theirs,
                    "advrobust_seconds": a["seconds"],
                    "art_seconds": b["seconds"],
                    "speed_ratio": b["seconds"] / a["seconds"],
                    "advrobust_peak_rss_mb": a["peak_rss_mb"],
                    "art_peak_rss_mb": b["peak_rss_mb"],
                    "advrobust_peak_rss_delta_mb": a.get("peak_rss_delta_mb"),
                    "art_peak_rss_delta_mb": b.get("peak_rss_delta_mb"),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--n", type=int, default=10_000, help="first n MNIST training images (default 10000)")
    parser.add_argument("--warmup-n", type=int, default=1000, help="images of the untimed warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, action="append", help="repeatable (default: 1)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--rounds", type=int, default=2, help="library order alternates between rounds")
    parser.add_argument(
        "--robust-val-default",
        action="store_true",
        help="advrobust with its default robust validation (500 held out, APGD-CE-20 each epoch)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load below this")
    parser.add_argument("--load-tries", type=int, default=10)
    parser.add_argument("--load-pause", type=float, default=30.0)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    if args.out is None:
        parser.error("--out is required")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": harness.machine(),
        "versions": harness.versions(),
        "n": args.n,
        "warmup_n": args.warmup_n,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "eps": EPS,
        "optimizer": "adam, lr 1e-3 (ART FBF overrides the lr with its own cyclic schedule each step)",
        "advrobust_robust_val": "default (500 held out, APGD-CE-20 per epoch)"
        if args.robust_val_default
        else 0,
        "differences": {m: DIFFERENCES[m] for m in methods},
    }
    runs: list[dict[str, Any]] = []

    def write() -> None:
        summary = summarize(runs)
        args.out.write_text(
            json.dumps({**meta, "results": summary, "ratios": ratios(summary)}, indent=2, default=str)
        )

    print(f"{meta['versions']}\n{meta['machine']}", flush=True)
    for threads in args.threads or [1]:
        for round_index in range(args.rounds):
            for method in methods:
                libraries = METHODS[method] if round_index % 2 == 0 else METHODS[method][::-1]
                for library in libraries:
                    case = {
                        "library": library,
                        "method": method,
                        "threads": threads,
                        "n": args.n,
                        "warmup_n": args.warmup_n,
                        "batch_size": args.batch_size,
                        "robust_val_default": args.robust_val_default,
                    }
                    load = harness.wait_for_quiet(args.max_load, args.load_tries, args.load_pause)
                    print(f"- threads {threads} round {round_index + 1} {library} {method} (load {load:.2f})")
                    result = run_in_subprocess(case, args.timeout)
                    result["load_before"], result["load_after"] = load, harness.load_avg()[0]
                    if result.get("status") == "ok":
                        print(
                            f"  {result['seconds']:.1f} s/epoch ({result['images_per_second']:.0f} img/s), "
                            f"peak RSS +{harness.fmt(result.get('peak_rss_delta_mb'), '.0f')} MB",
                            flush=True,
                        )
                    else:
                        print(f"  {result.get('status')}: {str(result.get('error', ''))[-500:]}", flush=True)
                    runs.append(result)
                    write()
    print("\nadvrobust speed / ART speed (ART s/epoch over advrobust s/epoch; > 1: advrobust faster)")
    for r in ratios(summarize(runs)):
        print(
            f"  threads {r['threads']}: {r['advrobust']:>13} {r['advrobust_seconds']:6.1f} s vs ART "
            f"{r['art']:<12} {r['art_seconds']:6.1f} s: speed x{r['speed_ratio']:.2f}; process peak RSS "
            f"{r['advrobust_peak_rss_mb']:.0f} vs {r['art_peak_rss_mb']:.0f} MB, during the epoch "
            f"+{harness.fmt(r['advrobust_peak_rss_delta_mb'], '.0f')} vs "
            f"+{harness.fmt(r['art_peak_rss_delta_mb'], '.0f')} MB"
        )
    summary = summarize(runs)
    for threads in sorted({s["threads"] for s in summary}):
        by = {s["library"]: s for s in summary if s["threads"] == threads and s["method"] == "fast-at"}
        floor = by.get("plain")
        if floor is None or floor.get("status") != "ok":
            continue
        others = ", ".join(
            f"{lib} {by[lib]['seconds']:.2f} s ({by[lib]['seconds'] / floor['seconds']:.2f}x)"
            for lib in ("advrobust", "art")
            if lib in by and by[lib].get("status") == "ok"
        )
        print(f"fast-at as a bare PyTorch loop, threads {threads}: {floor['seconds']:.2f} s/epoch; {others}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
