"""``python -m irnet.deploy CHECKPOINT OUT.safetensors [--fuse]`` (see irnet.deploy.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
