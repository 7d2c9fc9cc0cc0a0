"""Which epoch does robust validation choose, and what is it worth under the `standard` suite? (issue 4)

Trains the Fast-AT benchmark recipe (``train_models.py``'s ``mnist-fast-at``: small-cnn, linf 0.3, Wong et
al.'s settings) keeping every epoch's weights, then scores each epoch on the 500 training images the trainer
held out, with the validation attacks the trainer can use (PGD-10, the old default; APGD-CE with 10, 20
and 40 steps; each exactly as the trainer runs it) and with the `standard` suite, the number issue 4 is
judged by. Prints which epoch each validation attack would deliver and the suite's accuracy there; writes
JSON. No test image is used.

    ADVROBUST_DATA=<data> python benchmarks/choose_epoch.py --out <dir> --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import advrobust
from advrobust.config import TrainSettings
from advrobust.runs import train_run
from advrobust.training.callbacks import Callback, TrainContext
from advrobust.training.validation import ValAttack, holdout_split, robust_accuracy, validation_label

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_models import build_parser, recipes

EPS = 0.3
RULES: tuple[tuple[ValAttack, int], ...] = (("pgd", 10), ("apgd", 10), ("apgd", 20), ("apgd", 40))


class SaveEveryEpoch(Callback):
    """Writes the weights at each epoch end to ``folder/epoch<N>.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, ctx: TrainContext, *, epoch: int) -> None:
        torch.save(ctx.model.state_dict(), self.folder / f"epoch{epoch}.pt")


def recipe() -> dict[str, object]:
    """The benchmark model's recipe (``train_models.py``'s defaults)."""
    return recipes(build_parser().parse_args([]))["mnist-fast-at"]


def train_keeping_epochs(out: Path, seed: int) -> None:
    settings = TrainSettings.model_validate(
        {"data": "mnist", "model": "small-cnn", "seed": seed, "out": str(out / "run"), **recipe()}
    )
    train_run(settings, callbacks=[SaveEveryEpoch(out)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--suite-from", type=int, default=3, help="first epoch the suite scores (default 3)")
    args = parser.parse_args()
    if not os.environ.get("ADVROBUST_DATA"):
        parser.error("set ADVROBUST_DATA to the folder holding mnist/ (the four IDX .gz files)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"advrobust {advrobust.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    tick = time.perf_counter()
    marker = args.out / "seed.txt"
    if marker.exists() and marker.read_text().strip() != str(args.seed):
        parser.error(f"{args.out} holds a run of seed {marker.read_text().strip()}: pass another --out")
    if not (args.out / "run" / "model.safetensors").exists():
        marker.write_text(str(args.seed))
        train_keeping_epochs(args.out, args.seed)
    print(f"trained in {time.perf_counter() - tick:.0f} s")
    # The guard may stop training early: score the epochs that were saved.
    epochs = [e for e in range(1, int(recipe()["epochs"]) + 1) if (args.out / f"epoch{e}.pt").exists()]  # type: ignore[call-overload]
    threat = advrobust.ThreatModel(norm="linf", eps=EPS)
    _, held = holdout_split(advrobust.load_dataset("mnist", split="train"), None, threat, seed=args.seed)
    assert held is not None
    model = advrobust.load_model(args.out / "run", device="cpu")
    rows: list[dict[str, Any]] = []
    for epoch in epochs:
        model.load_state_dict(torch.load(args.out / f"epoch{epoch}.pt", weights_only=True))
        row: dict[str, Any] = {"epoch": epoch}
        for name, steps in RULES:
            # As the trainer validates: the same function, attack and seed (config.seed + 2).
            clean, robust = robust_accuracy(model, held, threat, attack=name, steps=steps, seed=args.seed + 2)
            row["clean"], row[validation_label(name, steps)] = clean, robust
        if epoch >= args.suite_from:
            start = time.perf_counter()
            result = advrobust.evaluate(model, held, "standard", threat=threat, batch_size=250, seed=0)
            row["suite"], row["suite_seconds"] = result.robust.value, time.perf_counter() - start
        rows.append(row)
        cells = "  ".join(f"{k} {v:.1%}" for k, v in row.items() if k not in ("epoch", "suite_seconds"))
        print(f"epoch {epoch}: {cells}", flush=True)
    picks = {}
    for name, steps in RULES:
        label = validation_label(name, steps)
        best = max(rows, key=lambda r: (r[label], r["clean"]))
        picks[label] = {"epoch": best["epoch"], "suite": best.get("suite")}
        suite = f"{best['suite']:.1%}" if "suite" in best else "not scored"
        print(f"{label} would deliver epoch {best['epoch']}: suite {suite}")
    scored = [r for r in rows if "suite" in r]
    if scored:
        top = max(scored, key=lambda r: r["suite"])
        print(f"the suite's best epoch: {top['epoch']} ({top['suite']:.1%})")
    (args.out / "choose_epoch.json").write_text(
        json.dumps({"seed": args.seed, "rows": rows, "picks": picks}, indent=2)
    )


if __name__ == "__main__":
    main()
