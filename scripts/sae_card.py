"""`python scripts/sae_card.py` still works: the command is `claims-harness sae-card` (harness.cli.sae_card)."""

from harness.cli.sae_card import main

if __name__ == "__main__":
    raise SystemExit(main())
