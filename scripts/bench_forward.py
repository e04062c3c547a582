"""`python scripts/bench_forward.py` still works: the command is `claims-harness bench-forward` (harness.cli.bench_forward)."""

from harness.cli.bench_forward import main

if __name__ == "__main__":
    raise SystemExit(main())
