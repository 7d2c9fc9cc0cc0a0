"""Issue 9's scaling note: samples per second of 1 vs 2 processes (DDP under torchrun, gloo on CPU).

Cases, each a fresh CLI run on the bundled ``mnist-mini`` (5,000 training, 1,000 test images):

- ``train``: ``pgd-at`` (linf 0.3, PGD-7) on small-cnn, one epoch, the same global batch of 128:
  1 process x 1 thread, 1 process x 2 threads, and ``torchrun --nproc_per_node 2`` x 1 thread each
  (batch 64 per process);
- ``eval``: PGD-100 (linf 0.3) on the 1,000 test images, sharded across the processes.

Training speed is the epoch's images over its seconds (rank 0's ``history.json``); evaluation speed is the
sample count over the evaluation's own seconds (its JSON). Process start-up is not counted in either.

Usage:
    python benchmarks/ddp_scaling.py --out ddp.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TRAIN_N = 5000


def run(args: list[str], *, processes: int, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "advrobust"]
    if processes > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(processes), "-m", "advrobust",
        ]  # fmt: skip
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    layouts = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for processes, threads in layouts:
            label = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
            out = work / f"train-{processes}-{threads}"
            run(
                [
                    "train", "--data", "mnist-mini", "--defense", "pgd-at", "--eps", "0.3", "--steps", "7",
                    "--epochs", str(args.epochs), "--batch-size", str(128 // processes), "--robust-val", "0",
                    "--out", str(out), "--quiet",
                ],
                processes=processes,
                threads=threads,
            )  # fmt: skip
            history = json.loads((out / "history.json").read_text())
            epochs = history["history"]
            seconds = sum(float(e["seconds"]) for e in epochs)
            rows.append(
                {
                    "case": "train pgd-at (PGD-7) small-cnn",
                    "layout": label,
                    "samples": TRAIN_N * len(epochs),
                    "seconds": seconds,
                    "samples_per_second": TRAIN_N * len(epochs) / seconds,
                }
            )
            print(rows[-1], flush=True)
            result = work / f"eval-{processes}-{threads}.json"
            run(
                [
                    "eval", "--model", str(out), "--data", "mnist-mini", "--samples", "1000", "--eps", "0.3",
                    "--attack", "pgd", "--steps", "100", "--json", str(result), "--quiet",
                ],
                processes=processes,
                threads=threads,
            )  # fmt: skip
            evaluation = json.loads(result.read_text())["results"][0]
            rows.append(
                {
                    "case": "eval PGD-100 small-cnn",
                    "layout": label,
                    "samples": 1000,
                    "seconds": evaluation["seconds"],
                    "samples_per_second": 1000 / evaluation["seconds"],
                    "robust": evaluation["robust"],
                }
            )
            print(rows[-1], flush=True)
    report = {
        "script": "benchmarks/ddp_scaling.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    base = {r["case"]: r["samples_per_second"] for r in rows if r["layout"].startswith("1 process x 1")}
    print("\n| case | layout | samples/s | vs 1 x 1 |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['layout']} | {r['samples_per_second']:.0f} "
            f"| {r['samples_per_second'] / base[r['case']]:.2f}x |"
        )


if __name__ == "__main__":
    main()
