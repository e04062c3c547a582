"""`python scripts/bench_peer.py` still works: the command is `claims-harness bench-peer` (harness.cli.bench_peer)."""

from harness.cli.bench_peer import main

if __name__ == "__main__":
    raise SystemExit(main())
