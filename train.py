"""Train a Vision Transformer. `python train.py` trains on sklearn's digits; `--help` lists every flag.

The code lives in vit/train.py (also installed as the `vit-train` command).
"""

from vit.train import main

if __name__ == "__main__":
    raise SystemExit(main())
