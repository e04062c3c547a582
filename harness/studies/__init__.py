"""Studies: one per claim family (C1/C3/C4 features, C2b formats, C5 compile time, C6 contexts, the quirks).

May import every stage below (data, prompts, model, runs, sae, scoring); each returns dataclasses and Measurements."""
