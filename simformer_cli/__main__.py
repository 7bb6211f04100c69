"""`python -m simformer_cli ...` (also what `torchrun -m simformer_cli` runs)."""

from simformer_cli.cli import main

main()
