"""Multiple-choice data: one record type, loaders that report every row, the control set, stratified subsets."""

from harness.data.records import LETTERS, LoadReport, MCQuestion

__all__ = ["LETTERS", "LoadReport", "MCQuestion"]
