"""Peak memory of ViT-S/16 training with and without `train.py --grad-checkpointing`, on the CPU.

Each run is `train.py --model vit_small_patch16_224` on a folder of random 224x224 RGB JPEGs (written here,
in memory mode, no worker processes), stopped after --steps optimizer steps; its peak resident memory is the
operating system's account of that finished process (`os.wait4`'s ru_maxrss). The runs alternate off/on for
each batch size, `--repeats` times. The difference between off and on is the activation memory that
checkpointing gives back; the rest (weights, AdamW's two moments, gradients, the data, torch itself) is the same
in both.

    python benchmarks/grad_checkpointing.py                       # batch 8 and 32, fp32, 2 repeats (~3 min)
    python benchmarks/grad_checkpointing.py --batches 16 --precision bf16 --out result.json

Results: a table on stdout and JSON (every run's peak and seconds, the CPU, torch's version).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import cpu_description, torch_version  # noqa: E402


def write_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def peak_of_run(argv: list[str], log: Path) -> tuple[float, float]:
    """(peak resident MiB, seconds) of `python train.py ARGV`, its output in `log`."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, stdout=f, stderr=f)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own account, ru_maxrss in KiB
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"train.py {' '.join(argv)} failed:\n{log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="8,32", help="comma-separated batch sizes, ascending")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=2, help="optimizer steps a run")
    p.add_argument("--repeats", type=int, default=2, help="runs of each (batch, off/on)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/grad-checkpointing-<time>.json)")
    args = p.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",")]
    machine = {"cpu": cpu_description(), "torch": torch_version(), "load_average_start": os.getloadavg()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "images", per_class=max(batches))
        for batch in batches:
            runs = {"off": [], "on": []}
            for repeat in range(args.repeats):
                for on in ("off", "on"):
                    out = Path(tmp) / f"run-{batch}-{repeat}-{on}"
                    flags = ["--model", "vit_small_patch16_224", "--dataset", "folder", "--data-dir", str(data),
                             "--val-size", "2", "--data-mode", "memory", "--crop-pad", "0", "--batch-size",
                             str(batch), "--max-steps", str(args.steps), "--precision", args.precision,
                             "--device", "cpu", "--threads", "0", "--quiet", "--output", str(out)]
                    runs[on].append(peak_of_run(flags + (["--grad-checkpointing"] if on == "on" else []),
                                                Path(tmp) / f"{out.name}.log"))
            peak = {on: statistics.median(m for m, _ in r) for on, r in runs.items()}
            rows.append({"batch": batch, "precision": args.precision, "steps": args.steps,
                         "peak_mib_off": round(peak["off"], 1), "peak_mib_on": round(peak["on"], 1),
                         "saved_mib": round(peak["off"] - peak["on"], 1),
                         "runs": {on: [{"peak_mib": round(m, 1), "seconds": round(s, 1)} for m, s in r]
                                  for on, r in runs.items()}})
    machine["load_average_end"] = os.getloadavg()

    print(f"{machine['cpu']['model']}, {machine['cpu']['cores']} cores, torch {machine['torch']}; ViT-S/16 "
          f"(vit_small_patch16_224) training, {args.precision}, {args.steps} steps, median of {args.repeats} runs")
    print(f"{'batch':>5}  {'peak MiB, off':>13}  {'peak MiB, on':>12}  {'saved MiB':>9}  {'seconds off / on':>16}")
    for r in rows:
        secs = [statistics.median(x["seconds"] for x in r["runs"][on]) for on in ("off", "on")]
        print(f"{r['batch']:>5}  {r['peak_mib_off']:>13.0f}  {r['peak_mib_on']:>12.0f}  {r['saved_mib']:>9.0f}  "
              f"{secs[0]:>7.1f} / {secs[1]:<6.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"grad-checkpointing-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"argv": sys.argv, "machine": machine, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
