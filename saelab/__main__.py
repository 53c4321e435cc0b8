"""`python -m saelab ...` is the `saelab` command; torchrun starts it this way:
`torchrun --nproc_per_node=2 -m saelab train config.toml`."""

import sys

from saelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
