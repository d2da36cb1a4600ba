"""Allow ``python -m sparsedino`` (and ``torchrun -m sparsedino``) as an alias of the console command."""

from sparsedino.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
