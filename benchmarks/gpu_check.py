"""The GPU check: on a CUDA machine, in a few minutes, everything that only a GPU can show, in one table.

1. The tests that need CUDA (`pytest -k cuda`: fused-kernel numerics, autocast, device handling).
2. Speed against timm, the same run: `benchmarks/throughput.py` at ViT-S/16, bf16, inference and training,
   eager and compiled (SDPA picks flash attention on the GPU).
3. A short training run of train.py on the GPU (digits, two epochs), which must end with exit 0.

    python benchmarks/gpu_check.py                      # on the GPU machine: about 3-5 minutes
    python benchmarks/gpu_check.py --device cpu --tiny  # the same steps on a tiny config (the test suite's)

Prints each step's outcome and time, the throughput table, and exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step(name: str, cmd: list[str], timeout: float) -> dict:
    start = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        code, out = 124, f"timed out after {timeout:.0f} s\n{e.stdout or ''}"
    seconds = time.perf_counter() - start
    print(f"[{'ok' if code in (0, 5) else 'FAILED'}] {name}: {seconds:.0f} s", flush=True)  # pytest 5: none ran
    return dict(name=name, command=" ".join(cmd), exit=code, seconds=round(seconds, 1), tail=out[-3000:])


def cuda_test_files() -> list[str]:
    """The test files that hold CUDA tests (named test_cuda_*): collecting the whole suite takes longer than
    running them."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "def test_cuda" in f.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check), or cpu (to test this script)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and one timed round: the script's own test")
    p.add_argument("--out", default="", help="JSON path (default: benchmarks/results/gpu-check-<device>.json)")
    args = p.parse_args(argv)

    py = sys.executable
    config, rounds, warmup = ("nano", "1", "0") if args.tiny else ("vit_s16", "3", "2")
    precision = "bf16" if args.device.startswith("cuda") else "fp32"  # bf16: where a GPU has it natively
    models = "ours-eager,timm" if args.tiny else "ours,ours-eager,timm,timm-compiled"
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "throughput.json"
        steps = [
            step("tests that need CUDA", [py, "-m", "pytest", "-q", "-x", "-k", "cuda", *cuda_test_files()], 900),
            step("throughput against timm", [py, "benchmarks/throughput.py", "--device", args.device, "--configs",
                                             config, "--models", models, "--precisions", precision, "--rounds", rounds,
                                             "--warmup", warmup, *(["--batch", "32", "--gemm-size", "512"] if args.tiny else []),
                                             "--no-memory", "--out", str(table)], 900),
            step("short training run", [py, "train.py", "--device", args.device, "--epochs", "2", "--quiet",
                                        *(["--max-steps", "3"] if args.tiny else []),
                                        "--output", str(Path(tmp) / "run")], 600),
        ]
        rows = json.loads(table.read_text()).get("rows", []) if table.is_file() else []
    for s in steps:
        if s["exit"] not in (0, 5):
            print(f"\n--- {s['name']} failed (exit {s['exit']}): {s['command']}\n{s['tail']}")
    throughput = next((s for s in steps if s["name"].startswith("throughput")), None)
    if throughput is not None and throughput["exit"] == 0:
        print("\n" + "\n".join(line for line in throughput["tail"].splitlines()
                               if "x timm" in line or line.startswith(config)))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu-check-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=args.device, tiny=args.tiny, steps=steps, throughput=rows), indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(s["exit"] in (0, 5) for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
