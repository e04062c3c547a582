"""Reporting: plots, feature dashboards (jinja2) and the compile-time report, formatted from studies' results.

May import studies and everything below; never recomputes a figure (claims.json is written by harness.claims.report)."""
