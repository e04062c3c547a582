"""`python scripts/bench_evaluation.py` still works: the command is `claims-harness bench-evaluation` (harness.cli.bench_evaluation)."""

from harness.cli.bench_evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
