"""Train an IR-Net model: ``python -m irnet.train`` (see ``--help``; also the ``irnet-train`` script).

    python -m irnet.train --preset demo                              # a few minutes on a CPU
    python -m irnet.train --model resnet20_1w1a --dataset cifar10 --data-dir ~/data
    python -m irnet.train --preset cifar10_vgg_small_1w1a --data-dir ~/data --epochs 10
    torchrun --nproc-per-node 8 -m irnet.train --preset imagenet_resnet18_1w1a --data-dir /imagenet

This module is the entry point only; the training lives in :mod:`irnet.training` (what a run
does, and one module per concern). The names below are re-exported so that
``from irnet import train`` keeps working as it did when everything lived here.
"""
import sys

from .training import (EXIT_ERROR, EXIT_NONFINITE, TRAINING_OPS, Dist, FolderFeed, GlobalBatchNorm2d,  # noqa: F401
                       LRSchedule, MemoryFeed, NonFiniteLoss, UsageError, build_data, build_model, build_parser,
                       convert_sync_bn, deploy_check, evaluate, main, predict, resolve_recipe, setup_distributed,
                       train)

__all__ = ["main", "build_parser", "LRSchedule", "NonFiniteLoss"]

if __name__ == "__main__":
    sys.exit(main(allow_reexec=True))
