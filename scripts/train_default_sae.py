"""`python scripts/train_default_sae.py` still works: the command is `claims-harness train-sae` (harness.cli.train_sae)."""

from harness.cli.train_sae import main

if __name__ == "__main__":
    raise SystemExit(main())
