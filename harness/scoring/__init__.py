"""Scoring: MC readings (tie-aware accuracy, option AUC), statistics (Wilson, bootstrap, tests) and Measurement.

May import errors only (pure numpy/scipy); every figure a study hands to the gate is a scoring.Measurement."""
