"""Sparse autoencoders: the SAE (sae), file formats (formats), readings, pursuit, quality metrics, training.

May import model (residuals, splicing), scoring (readings score features) and errors/validation; nothing above."""

from harness.sae.formats import load_any, load_gemma_scope, load_sae, load_saelens, load_saex, read_card, save_sae
from harness.sae.metrics import SAEQuality, ce_loss_recovered, measure_quality, quality_from_arrays
from harness.sae.sae import (
    SAEMeta,
    SAEParams,
    check_compatible,
    check_features,
    decode,
    decoder_projection,
    encode,
    pre_activations,
    reconstruct,
)

__all__ = [
    "SAEMeta", "SAEParams", "SAEQuality", "ce_loss_recovered", "check_compatible", "check_features", "decode",
    "decoder_projection", "encode", "load_any", "load_gemma_scope", "load_sae", "load_saelens", "load_saex",
    "measure_quality", "pre_activations", "quality_from_arrays", "read_card", "reconstruct", "save_sae",
]
