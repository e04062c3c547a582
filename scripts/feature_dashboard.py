"""`python scripts/feature_dashboard.py` still works: the command is `claims-harness dashboard` (harness.cli.dashboard)."""

from harness.cli.dashboard import main

if __name__ == "__main__":
    raise SystemExit(main())
