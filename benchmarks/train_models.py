"""Train the two benchmark models on full MNIST and save them as advrobust run directories.

- ``<out>/mnist-standard``: small-cnn, normal training (Adam 1e-3, 3 epochs).
- ``<out>/mnist-fast-at``: small-cnn, Fast-AT at linf eps 0.3 with Wong et al. 2020's MNIST recipe
  (FGSM from a uniform random start, step 1.25 * eps = 0.375, 10 epochs, Adam, cyclic lr 0 -> 5e-3 -> 0,
  batch 100). As in Wong et al.'s MNIST model, no input normalization inside the model (``normalize``
  off; ``--fast-normalize`` turns advrobust's default per-channel normalization back on).

Fast-AT's random start is Wong et al.'s: x + U(-eps, eps) unclipped, the FGSM step, then the projection onto
the eps-ball and [0, 1] (advrobust's ``fast-at`` default, ``clip_start=False``). A start clipped to [0, 1]
first makes the FGSM point nearly deterministic on MNIST's saturated pixels, i.e. plain FGSM training, and the
model overfits catastrophically (PGD-40 accuracy 2-12% in our runs); ``--fast-clip-start`` trains that way.
``--fast-prior-start`` starts each sample's FGSM from its own perturbation of the previous epoch instead
(``prior_start``, step 0.5 * eps = 0.15; the benchmark model keeps Wong et al.'s uniform start), and
``--fast-prior-reg L`` adds Jia et al. 2022's prior-guided regularizer with weight L (``prior_reg``).

Two more recipes (issue 4's reproduction; trained only when named with ``--only``, see below):

- ``<out>/mnist-pgd-at``: small-cnn, PGD adversarial training (Madry et al. 2018) at linf eps 0.3 with
  PGD-``--pgd-steps`` (default 10) of Madry's 2.5 * eps / steps (0.075) from a uniform random start, trained
  like the Fast-AT model (Adam, cyclic lr 0 -> 5e-3 -> 0, batch 100, no normalization), ``--pgd-epochs``
  (default 10), with half the loss on clean inputs (``--pgd-clean-weight``, default 0.5: Goodfellow et al.
  2015's mix, ART's AdversarialTrainer default ratio). Pure PGD-AT (``--pgd-clean-weight 0``, Madry's) stayed
  at chance on this small model in our runs (loss 2.30, 11% accuracy after 7 epochs of this recipe, and after
  2 x 12,000 images at constant Adam lr 1e-3 or 1e-4, with or without normalization). Madry et al. used a
  larger CNN, PGD-40 of 0.01 and ~83 epochs, too slow for a CPU run. A linear eps warm-up fixes that:
  ``--pgd-clean-weight 0 --pgd-eps-warmup 3`` trains pure PGD-AT to 98.4% clean, 86.7% under the
  ``standard`` suite (benchmarks/RESULTS.md).
- ``<out>/mnist-trades``: small-cnn, TRADES (Zhang et al. 2019) at linf eps 0.3, beta 6,
  ``--trades-steps`` (default 10) of eps / 4 (0.075) from x + 0.001 N(0, 1), same optimizer and schedule,
  ``--trades-epochs`` (default 10). The reference MNIST script uses SGD, 100 epochs, 40 steps of 0.01, beta 1.

All go through ``advrobust.runs.train_run`` (what ``advrobust train`` runs). Afterwards each model gets a
quick check on the first ``--check-n`` test images: clean accuracy and PGD-40 (linf eps 0.3) robust accuracy,
plus, with ``--check-suite standard``, robust accuracy under advrobust's ``standard`` suite (AutoAttack's
recipe) on the same images. ``--check-holdout`` also runs the suite on the training images the trainer held
out, and ``--holdout-only`` skips the test images, to screen recipes without the test set (those images also
chose the delivered epoch, so their numbers lean optimistic; compare recipes with them, report test numbers).

Usage:
    ADVROBUST_DATA=/path/to/data python benchmarks/train_models.py --out /tmp/advrobust-bench/models
    ADVROBUST_DATA=/path/to/data python benchmarks/train_models.py --out /tmp/advrobust-bench/models \
        --threads 1 --only mnist-pgd-at --only mnist-trades --check-suite standard
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import advrobust
import advrobust.runs
from advrobust.config import TrainSettings
from advrobust.runs import train_run
from advrobust.training.fast_at import FastAT
from advrobust.training.validation import holdout_split

BUILD_OBJECTIVE = advrobust.runs.build_objective


DEFAULT_OUT = Path(os.environ.get("TMPDIR", "/tmp")) / "advrobust-bench" / "models"


def recipes(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    return {
        "mnist-standard": {
            "defense": "standard",
            "epochs": args.standard_epochs,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 1e-3,
            "schedule": "constant",
        },
        "mnist-fast-at": {
            "defense": "fast-at",
            "norm": "linf",
            "eps": args.fast_eps,
            "step_size": args.fast_step or (0.5 if args.fast_prior_start else 1.25) * args.fast_eps,
            "prior_start": args.fast_prior_start,
            "prior_reg": args.fast_prior_reg,
            "epochs": args.fast_epochs,
            "eps_warmup": args.fast_eps_warmup,
            "ema_decay": args.fast_ema,
            "batch_size": 100,
            "optimizer": "adam",
            "lr": 5e-3,
            "schedule": "cyclic",
            "normalize": args.fast_normalize,
        },
        "mnist-pgd-at": {
            "defense": "pgd-at",
            "norm": "linf",
            "eps": 0.3,
            "steps": args.pgd_steps,
            "clean_weight": args.pgd_clean_weight,
            "eps_warmup": args.pgd_eps_warmup,
            "epochs": args.pgd_epochs,
            "batch_size": 100,
            "optimizer": "adam",
            "lr": 5e-3,
            "schedule": "cyclic",
            "normalize": False,
        },
        "mnist-trades": {
            "defense": "trades",
            "norm": "linf",
            "eps": 0.3,
            "steps": args.trades_steps,
            "beta": 6.0,
            "epochs": args.trades_epochs,
            "batch_size": 100,
            "optimizer": "adam",
            "lr": 5e-3,
            "schedule": "cyclic",
            "normalize": False,
        },
    }


# Trained only when named with --only (they take ~12-15 min each on one CPU thread).
OPT_IN = ("mnist-pgd-at", "mnist-trades")


def quick_check(
    run_dir: Path,
    n: int,
    suite: str | None = None,
    holdout_seed: int | None = None,
    *,
    test: bool = True,
) -> dict[str, float]:
    """Clean and PGD-40 (linf 0.3, one restart) accuracy on the first ``n`` MNIST test images.

    With ``suite``, also robust accuracy under that advrobust suite (e.g. ``standard``) and its wall time;
    with ``holdout_seed`` too, the suite's robust accuracy on the training images the trainer held out for
    robust validation (its default 500, drawn with the training seed): a number to choose recipes by
    without looking at the test set (``test=False`` then skips the test images).
    """
    model = advrobust.load_model(run_dir, device="cpu")
    threat = advrobust.ThreatModel(norm="linf", eps=0.3)
    check: dict[str, float] = {}
    if suite is not None and holdout_seed is not None:
        train = advrobust.load_dataset("mnist", split="train")
        _, held = holdout_split(train, None, threat, seed=holdout_seed)
        assert held is not None
        result = advrobust.evaluate(model, held, suite, threat=threat, batch_size=250, seed=0)
        check.update(holdout_n=len(held), holdout_clean=result.clean.value)
        check[f"holdout_{suite}_robust"] = result.robust.value
    if not test:
        return check
    images = advrobust.load_dataset("mnist", split="test").take(n)
    tick = time.perf_counter()
    result = advrobust.evaluate(
        model, images, [advrobust.PGD(threat=threat, steps=40)], batch_size=500, seed=0
    )
    check.update(
        {
            "n": n,
            "clean": result.clean.value,
            "pgd40_robust": result.robust.value,
            "check_seconds": time.perf_counter() - tick,
        }
    )
    if suite is not None:
        tick = time.perf_counter()
        result = advrobust.evaluate(model, images, suite, threat=threat, batch_size=250, seed=0)
        check[f"{suite}_robust"] = result.robust.value
        check[f"{suite}_seconds"] = time.perf_counter() - tick
    return check


def build_parser() -> argparse.ArgumentParser:
    """The command line (its defaults are the benchmark recipes)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the run directories")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--standard-epochs", type=int, default=3)
    parser.add_argument("--fast-epochs", type=int, default=10)
    parser.add_argument(
        "--fast-ema", type=float, default=None, help="Fast-AT: EMA decay of the weights (default: no EMA)"
    )
    parser.add_argument(
        "--fast-eps",
        type=float,
        default=0.3,
        help="Fast-AT: training eps (step 1.25 eps; the checks stay at 0.3, default 0.3)",
    )
    parser.add_argument(
        "--fast-eps-warmup", type=float, default=0.0, help="Fast-AT: epochs of linear eps ramp-up (0: off)"
    )
    parser.add_argument("--pgd-epochs", type=int, default=10)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--pgd-clean-weight", type=float, default=0.5, help="0: pure PGD-AT (Madry's)")
    parser.add_argument(
        "--pgd-eps-warmup", type=float, default=0.0, help="epochs of linear eps ramp-up (0: off)"
    )
    parser.add_argument("--trades-epochs", type=int, default=10)
    parser.add_argument("--trades-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fast-normalize",
        action="store_true",
        help="Fast-AT model with the data's mean/std normalization inside (advrobust's default; off here)",
    )
    parser.add_argument(
        "--fast-clip-start",
        action="store_true",
        help="Fast-AT with its random start clipped to [0, 1] before the step (overfits on MNIST)",
    )
    parser.add_argument(
        "--fast-step",
        type=float,
        default=None,
        help="Fast-AT: FGSM step (default 1.25 eps; 0.5 eps with --fast-prior-start)",
    )
    parser.add_argument(
        "--fast-prior-start",
        action="store_true",
        help="Fast-AT starting each sample from its previous epoch's perturbation, step 0.5 eps (prior_start)",
    )
    parser.add_argument(
        "--fast-prior-reg",
        type=float,
        default=None,
        help="Fast-AT: weight of the prior-guided regularizer (prior_reg; default 0, off)",
    )
    parser.add_argument("--check-n", type=int, default=1000, help="test images for the quick check")
    parser.add_argument(
        "--check-suite", choices=["quick", "standard"], help="also evaluate each model with this suite"
    )
    parser.add_argument(
        "--only",
        choices=["mnist-standard", "mnist-fast-at", *OPT_IN],
        action="append",
        help=f"train only these (repeatable); {', '.join(OPT_IN)} are trained only when named",
    )
    parser.add_argument(
        "--check-holdout",
        action="store_true",
        help="with --check-suite, also run the suite on the trainer's held-out training images",
    )
    parser.add_argument(
        "--holdout-only",
        action="store_true",
        help="with --check-holdout, skip the test-image checks (screen recipes without the test set)",
    )
    parser.add_argument("--skip-existing", action="store_true", help="keep run directories already trained")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.holdout_only and not args.check_holdout:
        parser.error("--holdout-only needs --check-holdout (and --check-suite)")
    if args.check_holdout and args.check_suite is None:
        parser.error("--check-holdout runs the --check-suite on the held-out images: name the suite too")
    if not os.environ.get("ADVROBUST_DATA"):
        parser.error("set ADVROBUST_DATA to the folder holding mnist/ (the four IDX .gz files)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"advrobust {advrobust.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"cpu: {platform.processor() or platform.machine()}, out: {args.out}")
    summary = {}
    for name, recipe in recipes(args).items():
        if (args.only and name not in args.only) or (not args.only and name in OPT_IN):
            continue
        run_dir = args.out / name
        if args.skip_existing and (run_dir / "card.json").exists():
            print(f"{name}: exists, skipped training")
            entry: dict[str, object] = {"trained": False}
        else:
            settings = TrainSettings(
                data="mnist", model="small-cnn", seed=args.seed, out=str(run_dir), **recipe
            )
            if recipe["defense"] == "fast-at" and args.fast_clip_start:
                threat = advrobust.ThreatModel(norm="linf", eps=float(recipe["eps"]))  # type: ignore[arg-type]
                objective = FastAT(
                    threat=threat,
                    step_size=float(recipe["step_size"]),  # type: ignore[arg-type]
                    clip_start=True,
                    prior_start=bool(recipe["prior_start"]),
                    prior_reg=float(recipe["prior_reg"] or 0.0),  # type: ignore[arg-type]
                )
                advrobust.runs.build_objective = lambda *_a, objective=objective, **_k: objective
            else:
                advrobust.runs.build_objective = BUILD_OBJECTIVE
            tick = time.perf_counter()
            outcome = train_run(settings)
            seconds = time.perf_counter() - tick
            history = outcome.result.history
            print(
                f"{name}: trained {len(history)} epochs in {seconds:.1f} s wall "
                f"({seconds / max(1, len(history)):.1f} s/epoch); weights={outcome.result.weights}, "
                f"best_epoch={outcome.result.best_epoch}, stopped={outcome.result.stopped}"
            )
            for warning in outcome.result.warnings:
                print(f"{name}: warning: {warning}")
            entry = {
                "trained": True,
                "recipe": recipe,
                "fast_clip_start": args.fast_clip_start if recipe["defense"] == "fast-at" else None,
                "wall_seconds": seconds,
                "epochs_run": len(history),
                "weights": outcome.result.weights,
                "best_epoch": outcome.result.best_epoch,
                "stopped": outcome.result.stopped,
                "warnings": outcome.result.warnings,
                "card_metrics": outcome.card.metrics,
            }
        # Only adversarial recipes hold images out (clean training uses every image).
        held_out = args.check_holdout and recipe["defense"] != "standard"
        check = quick_check(
            run_dir,
            args.check_n,
            args.check_suite,
            args.seed if held_out else None,
            test=not args.holdout_only,
        )
        if "clean" in check:
            print(
                f"{name}: clean {check['clean']:.1%}, PGD-40 robust {check['pgd40_robust']:.1%} "
                f"on the first {check['n']} test images ({check['check_seconds']:.1f} s)"
            )
        if "holdout_n" in check:
            print(
                f"{name}: {args.check_suite} suite on the {check['holdout_n']:.0f} held-out training "
                f"images: clean {check['holdout_clean']:.1%}, robust "
                f"{check[f'holdout_{args.check_suite}_robust']:.1%}"
            )
        if args.check_suite is not None and f"{args.check_suite}_robust" in check:
            print(
                f"{name}: {args.check_suite} suite robust {check[f'{args.check_suite}_robust']:.1%} "
                f"({check[f'{args.check_suite}_seconds']:.1f} s)"
            )
        entry["check"] = check
        summary[name] = entry
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {args.out / 'train_summary.json'}")


if __name__ == "__main__":
    main()
