#!/usr/bin/env python
"""Train (and evaluate) mlsv models: ``python train.py --help``, the same command as ``mlsv train``.

    python train.py                      # the default run: synthetic corpus, 3 stages, evaluation, report
    python train.py --quick              # the same, shrunk to about 20 seconds on 2 CPU cores
    torchrun --standalone --nproc_per_node 2 train.py --quick   # two processes (GPUs, or CPUs with gloo)
    accelerate launch train.py --config configs/voxceleb2_wavlm_large.yaml      # a recipe

The code is mlsv.commands.train.
"""

import sys

from mlsv.commands import train


def main(argv=None) -> int:
    return train.main(argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
