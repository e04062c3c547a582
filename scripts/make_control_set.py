"""`python scripts/make_control_set.py` still works: the command is `claims-harness control-set` (harness.cli.control_set)."""

from harness.cli.control_set import main

if __name__ == "__main__":
    raise SystemExit(main())
