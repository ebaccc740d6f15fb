"""`python -m pipeline.cli ...` (also `torchrun -m pipeline.cli ...`): the `supmam` command."""
from pipeline.cli import main

if __name__ == "__main__":
    main()
