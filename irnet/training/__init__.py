"""Training of IR-Net models; the command line is ``python -m irnet.train`` (:mod:`irnet.train`).

What a run does:

* the EDE schedule sets ``k`` and ``t`` of every binary layer at the start of each epoch
  (:func:`irnet.set_ede`); SGD with momentum and a per-step learning-rate schedule
  (cosine annealing to 0 per epoch as in the paper's code, or warm-up + steps);
* a tqdm bar per epoch, ``metrics.jsonl`` (one JSON line per epoch), ``curves.png``
  (loss, accuracy, t, k) and ``summary.json`` in ``--out``;
* ``last.pt`` after every epoch and every ``--ckpt-every`` steps, ``best.pt`` at the best
  test top-1, all written atomically; ``--resume PATH|auto`` continues exactly where the
  run stopped, even mid-epoch (the data order is a pure function of seed, epoch and step);
* a non-finite loss stops the run naming the epoch and step, the last checkpoint untouched;
* under ``torchrun`` it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs):
  every rank takes its slice of each global batch, and only rank 0 writes or prints;
* at the end, if :mod:`irnet.deploy` is there, it converts the model to the bit-packed
  inference model and checks that both predict the same classes on the test set.

One module per concern, in the order a run uses them:

* ``cli``          the parser, ``--list-presets``, :func:`main` and its exit codes
* ``settings``     the recipe: preset < ``--config`` < flags (or the checkpoint's, on resume)
* ``prepare``      :func:`prepare`: device, recipe, data, model, optimizer -> a ``Run``
* ``distributed``  process group, all-reduce helpers, BatchNorm over the global batch
* ``feeds``        in-memory and ImageFolder data feeds (resumable batch order)
* ``optim``        SGD, the per-step learning-rate schedule, mixed precision
* ``state``        checkpoint lookup, RNG state, resume and checkpoint writing
* ``loop``         :func:`train`: prepare -> resume -> epochs -> finish; the non-finite watch
* ``evaluation``   test accuracy and the packed-model (deploy) check
* ``report``       start lines, progress bars, metrics.jsonl, curves.png, summary.json
* ``errors``       the exceptions and exit codes
"""
from .cli import build_parser, main
from .distributed import Dist, GlobalBatchNorm2d, convert_sync_bn, setup_distributed
from .errors import EXIT_ERROR, EXIT_NONFINITE, NonFiniteLoss, UsageError
from .evaluation import deploy_check, evaluate, predict
from .feeds import FolderFeed, MemoryFeed, build_data
from .loop import train
from .optim import LRSchedule
from .prepare import TRAINING_OPS, build_model
from .settings import resolve_recipe

__all__ = ["main", "build_parser", "resolve_recipe", "train", "LRSchedule", "NonFiniteLoss", "UsageError",
           "EXIT_ERROR", "EXIT_NONFINITE", "TRAINING_OPS", "Dist", "setup_distributed", "GlobalBatchNorm2d",
           "convert_sync_bn", "MemoryFeed", "FolderFeed", "build_data", "build_model", "evaluate", "predict",
           "deploy_check"]
