"""Sparse autoencoders: the SAE (sae), file formats (formats), readings, pursuit, quality metrics, training.

May import model (residuals, splicing), scoring (readings score features) and errors/validation; nothing above."""
