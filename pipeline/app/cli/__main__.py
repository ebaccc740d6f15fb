"""`python -m pipeline.app.cli ...` (also `torchrun -m pipeline.app.cli ...`): the `supmam` command."""
from pipeline.app.cli import main

if __name__ == "__main__":
    main()
