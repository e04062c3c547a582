"""Multiple-choice data: one record type, loaders that report every row, the control set, stratified subsets.

May import errors and validation only: the lowest stage, it knows nothing of tokens or models."""

from harness.data.records import LETTERS, LoadReport, MCQuestion

__all__ = ["LETTERS", "LoadReport", "MCQuestion"]
