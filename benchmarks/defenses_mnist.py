"""Issue 5 on full MNIST: input-transformation defenses under naive and adaptive attacks, and randomized
smoothing's certified accuracy.

Part ``transforms``: the normally trained small CNN (``<models>/mnist-standard``, from ``train_models.py``)
behind each of the library's input transforms (``InputTransformDefense``), on the first ``--n`` MNIST test
images, at each linf ``--eps``:

- clean: accuracy of the defended model (one draw of its randomness, for the random transforms);
- naive PGD: plain PGD-40 (step eps/4 ... the library default, one restart) through the defense, with the
  gradients the defense gives (zero through JPEG / bit depth, one noise draw for the random ones);
- adaptive: the worst case per image over naive PGD-40 and, made adaptive by ``advrobust.attacks.adapt``
  (BPDA with the identity surrogate for non-differentiable transforms, EOT over ``--eot-samples`` draws for
  randomized ones), PGD-40 (deterministic defenses only), APGD-CE and APGD-DLR (100 steps). For randomized
  defenses this is the ``adaptive`` suite's recipe (APGD-CE and APGD-DLR with 20 EOT draws) plus naive PGD;
  for deterministic ones it is not the full ``adaptive`` suite (which adds APGD-T, FAB-T and Square 5,000
  under BPDA): that would cost hours on these CPUs with the JPEG codec in every query.

The attacks run as a cascade (each on the images still standing); naive PGD is first, so its accuracy is
its own.

Part ``suite`` (only when asked, ``--part suite --suite LABEL``): the full ``adaptive`` suite on the first
``--suite-n`` images, for the transforms the cheaper recipe above left standing.

Part ``smoothing``: small CNNs trained with Gaussian-noise augmentation (``gaussian-augment``) at each
``--sigmas`` through ``advrobust.runs.train_run``, then Cohen et al.'s CERTIFY (``certify_dataset``: n0, n,
alpha) on the first ``--smooth-images`` test images; certified accuracy at l2 radii 0.25 / 0.5 / 1.0.

Usage:
    ADVROBUST_DATA=<data> OMP_NUM_THREADS=1 python benchmarks/defenses_mnist.py --models <models> \\
        --work <work> --out defenses.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import advrobust
from advrobust.attacks import APGD, PGD, Attack
from advrobust.attacks.adaptive import adapt, is_randomized
from advrobust.config import TrainSettings
from advrobust.defenses import InputTransformDefense, SmoothedClassifier, certify_dataset, parse_transform
from advrobust.runs import train_run

#: (label, transform spec): published settings. None is the undefended model.
TRANSFORMS: list[tuple[str, str | None]] = [
    ("none", None),
    ("jpeg:75", "jpeg:75"),  # Dziugaite et al. 2016 / Guo et al. 2018
    ("bitdepth:4", "bitdepth:4"),
    ("bitdepth:1", "bitdepth:1"),  # feature squeezing's MNIST setting (Xu et al. 2018)
    ("blur:1", "blur:1.0"),
    ("median:3", "median:3"),  # 3x3 median for feature squeezing (Xu et al. 2018; 2x2 there on MNIST)
    ("noise:0.3", "noise:0.3"),
    ("resize-pad:0.9", "resize-pad:0.9"),  # Xie et al. 2018's 299/331
]


def load_avg() -> float:
    return os.getloadavg()[0]


def transform_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = advrobust.load_model(args.models / "mnist-standard", device="cpu").eval()
    test = advrobust.load_dataset("mnist", split="test").take(args.n)
    rows = []
    for label, spec in TRANSFORMS:
        if args.only and label not in args.only:
            continue
        model: torch.nn.Module = base
        if spec is not None:
            model = InputTransformDefense(base, [parse_transform(spec)]).eval().manual_seed(args.seed)
        for eps in args.eps:
            threat = advrobust.ThreatModel(norm="linf", eps=eps)
            attacks: list[Attack] = [PGD(threat=threat, steps=40)]
            if not is_randomized(model) and spec is not None:
                attacks.append(adapt(PGD(threat=threat, steps=40), model))
            attacks += [
                adapt(APGD(threat=threat, loss="ce", steps=100), model, samples=args.eot_samples),
                adapt(APGD(threat=threat, loss="dlr", steps=100), model, samples=args.eot_samples),
            ]
            load_before = load_avg()
            tick = time.perf_counter()
            result = advrobust.evaluate(model, test, attacks, batch_size=250, seed=args.seed, cascade=True)
            seconds = time.perf_counter() - tick
            row = {
                "defense": label,
                "eps": eps,
                "n": result.n,
                "clean": result.clean.value,
                "naive_pgd": result.attacks[0].accuracy.value,
                "adaptive": result.robust.value,
                "adaptive_ci": list(result.robust.interval),
                "attacks": [
                    {
                        "attack": a.name,
                        "params": a.params,
                        "accuracy_after": a.accuracy.value,
                        "seconds": a.seconds,
                    }
                    for a in result.attacks
                ],
                "randomized": is_randomized(model),
                "seconds": seconds,
                "load_before": load_before,
            }
            rows.append(row)
            print(
                f"{label:16s} eps {eps:<4g} clean {row['clean']:6.1%}  naive PGD {row['naive_pgd']:6.1%}  "
                f"adaptive {row['adaptive']:6.1%}  ({seconds:6.1f} s, load {load_before:.2f})",
                flush=True,
            )
    return rows


def suite_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The full ``adaptive`` suite (BPDA-wrapped standard suite: APGD-CE, APGD-T, FAB-T, Square 5,000) on
    the first ``--suite-n`` images, for the transforms named by ``--suite``."""
    base = advrobust.load_model(args.models / "mnist-standard", device="cpu").eval()
    test = advrobust.load_dataset("mnist", split="test").take(args.suite_n)
    rows = []
    for label, spec in TRANSFORMS:
        if label not in args.suite:
            continue
        model: torch.nn.Module = base
        if spec is not None:
            model = InputTransformDefense(base, [parse_transform(spec)]).eval().manual_seed(args.seed)
        for eps in args.eps:
            threat = advrobust.ThreatModel(norm="linf", eps=eps)
            load_before = load_avg()
            tick = time.perf_counter()
            result = advrobust.evaluate(
                model, test, "adaptive", threat=threat, batch_size=250, seed=args.seed
            )
            seconds = time.perf_counter() - tick
            row = {
                "defense": label,
                "eps": eps,
                "n": result.n,
                "clean": result.clean.value,
                "adaptive_suite": result.robust.value,
                "attacks": [
                    {
                        "attack": a.name,
                        "params": a.params,
                        "accuracy_after": a.accuracy.value,
                        "seconds": a.seconds,
                    }
                    for a in result.attacks
                ],
                "seconds": seconds,
                "load_before": load_before,
            }
            rows.append(row)
            after = ", ".join(f"{a['attack']} {a['accuracy_after']:.1%}" for a in row["attacks"])
            print(
                f"{label:16s} eps {eps:<4g} adaptive suite, n {result.n}: clean {row['clean']:6.1%}, robust "
                f"{row['adaptive_suite']:6.1%} (after each: {after}; {seconds:.0f} s, load {load_before:.2f})",
                flush=True,
            )
    return rows


def smoothing_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    test = advrobust.load_dataset("mnist", split="test").take(args.smooth_images)
    x, y = _tensors(test)
    rows = []
    for sigma in args.sigmas:
        run_dir = args.work / f"mnist-gaussian-{sigma:g}"
        tick = time.perf_counter()
        if args.skip_existing and (run_dir / "card.json").exists():
            train_seconds = None
        else:
            train_run(
                TrainSettings(
                    data="mnist",
                    model="small-cnn",
                    defense="gaussian-augment",
                    sigma=sigma,
                    epochs=args.smooth_epochs,
                    batch_size=128,
                    optimizer="adam",
                    lr=1e-3,
                    seed=args.seed,
                    out=str(run_dir),
                )
            )
            train_seconds = time.perf_counter() - tick
        model = advrobust.load_model(run_dir, device="cpu").eval()
        card_metrics = advrobust.read_card(run_dir).metrics
        load_before = load_avg()
        generator = torch.Generator().manual_seed(args.seed)
        cert = certify_dataset(
            SmoothedClassifier(model, sigma=sigma),
            x,
            y,
            n0=args.n0,
            n=args.cert_n,
            alpha=args.alpha,
            radii=(0.0, 0.25, 0.5, 1.0),
            batch_size=1000,
            generator=generator,
        )
        row = {
            "sigma": sigma,
            "epochs": args.smooth_epochs,
            "train_seconds": train_seconds,
            "base_clean_accuracy": card_metrics.get("clean_accuracy"),
            "images": len(cert.labels),
            "n0": cert.n0,
            "n": cert.n,
            "alpha": cert.alpha,
            "radii": cert.radii,
            "certified": cert.certified,
            "abstained": cert.abstained,
            "certify_seconds": cert.seconds,
            "load_before": load_before,
        }
        rows.append(row)
        acc = "  ".join(f"r={r:g}: {c:6.1%}" for r, c in zip(cert.radii, cert.certified, strict=True))
        print(
            f"sigma {sigma:g}: base clean {row['base_clean_accuracy']}, certified {acc}, abstained "
            f"{cert.abstained:.1%} (train {train_seconds if train_seconds is None else round(train_seconds)} s, certify {cert.seconds:.0f} s, load {load_before:.2f})",
            flush=True,
        )
    return rows


def _tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return data.images.float().div(255), data.labels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="folder holding mnist-standard")
    parser.add_argument("--work", type=Path, required=True, help="folder for the noise-trained models")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--part", choices=["transforms", "suite", "smoothing"], action="append")
    parser.add_argument("--only", action="append", help="transform labels to run (default all)")
    parser.add_argument("--n", type=int, default=1000, help="test images for the transforms table")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--eot-samples", type=int, default=20)
    parser.add_argument(
        "--suite",
        action="append",
        default=[],
        help="transform labels for the full adaptive suite (part suite)",
    )
    parser.add_argument("--suite-n", type=int, default=200, help="test images for the full adaptive suite")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--smooth-epochs", type=int, default=5)
    parser.add_argument("--smooth-images", type=int, default=500)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--cert-n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--skip-existing", action="store_true", help="reuse noise-trained models in --work")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.environ.get("ADVROBUST_DATA"):
        parser.error("set ADVROBUST_DATA to the folder holding mnist/ (the four IDX .gz files)")
    torch.set_num_threads(args.threads)
    parts = args.part or ["transforms", "smoothing"]
    print(
        f"advrobust {advrobust.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpu {platform.processor() or platform.machine()}, load {load_avg():.2f}",
        flush=True,
    )
    out: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    out["environment"] = {
        "advrobust": advrobust.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    if "transforms" in parts:
        tick = time.perf_counter()
        out["transforms"] = {"n": args.n, "eot_samples": args.eot_samples, "rows": transform_rows(args)}
        out["transforms"]["seconds"] = time.perf_counter() - tick
        args.out.write_text(json.dumps(out, indent=2))
    if "suite" in parts:
        tick = time.perf_counter()
        out["adaptive_suite"] = {"n": args.suite_n, "rows": suite_rows(args)}
        out["adaptive_suite"]["seconds"] = time.perf_counter() - tick
        args.out.write_text(json.dumps(out, indent=2))
    if "smoothing" in parts:
        args.work.mkdir(parents=True, exist_ok=True)
        tick = time.perf_counter()
        out["smoothing"] = {"rows": smoothing_rows(args)}
        out["smoothing"]["seconds"] = time.perf_counter() - tick
        args.out.write_text(json.dumps(out, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
