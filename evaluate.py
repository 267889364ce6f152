"""Evaluate a checkpoint: `python evaluate.py CHECKPOINT --dataset digits` (see vit/evaluate.py, or --help)."""

from vit.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
