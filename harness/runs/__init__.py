"""Batched runs: the one forward runner (bucket plan, padding, packing, mesh, progress) and its caches.

May import data, prompts and model; the activation cache and JAX's compile cache live here. Nothing above."""
