"""GPT-2 and GPT-NeoX (harness.model.families.gpt2 / gpt_neox) against transformers: tiny random checkpoints written
by transformers itself (tests/family_standins.py: every LayerNorm weight and bias random, NeoX with rotary_pct 0.25
and both residual layouts) read through sources.read_checkpoint, in all three forms; packed batches (learned
positions read the packed positions); llama.cpp's own GGUF conversions; old file layouts (bare GPT-2 names, stored
mask / RoPE buffers); and every config key either read, shown to change nothing, or refused in one line.

Tolerance: TINY_ATOL = 1e-4 absolute on logits and residuals, float32 both sides (logit scale ~5, residuals ~7);
measured <= 3.9e-6 (three forms: GPT-2 2.2e-6, NeoX parallel 2.0e-6, sequential 2.3e-6; the switch variants 3.8e-6;
packed batches 2.2e-6; the GGUF files 2.9e-6).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import family_standins as fs
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from harness.errors import InputError
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.model.hf_reader import model_config_from_hf
from harness.model.sources import read_checkpoint
from harness.runs.packing import pack_trie, stack_rows

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.reference

TINY_ATOL = 1e-4
VARIANTS = ("gpt2", "gpt_neox", "gpt_neox_sequential")


def _close(ours, theirs, what: str, atol: float = TINY_ATOL) -> float:
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{what}: max abs difference {diff:.3g} (tolerance {atol:g}, scale {np.abs(theirs).max():.3g})")
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"
    return diff


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory):
    """(name, folder, checkpoint, tokens, transformers logits, transformers hidden states)."""
    folder = fs.write_hf(request.param, tmp_path_factory.mktemp(request.param))
    checkpoint = read_checkpoint(folder)
    tokens = np.random.default_rng(0).integers(0, checkpoint.config.vocab_size, (2, 24))
    logits, hidden = fs.reference(folder, tokens)
    return request.param, folder, checkpoint, tokens, logits, hidden


def test_the_config_is_the_family_maths(variant):
    name, _, checkpoint, *_ = variant
    c = checkpoint.config
    assert c.norm == "layer" and c.attention_bias and c.output_bias and c.mlp_bias and not c.gated_mlp
    if name == "gpt2":
        assert (c.architecture, c.positions, c.mlp, c.tie_embeddings, c.max_context) == ("gpt2", "learned", "gelu_tanh",
                                                                                          True, 64)
        assert "summary_type" in checkpoint.ignored_fields and "scale_attn_weights" not in checkpoint.ignored_fields
    else:
        assert (c.architecture, c.positions, c.mlp, c.rotary_dim, c.tie_embeddings) == ("gpt_neox", "rope", "gelu", 4,
                                                                                         False)
        assert c.parallel_residual == (name == "gpt_neox")


@pytest.mark.parametrize("form", list(Form))
def test_logits_and_residuals_equal_transformers(variant, form):
    """Logits, and the residual before each block (capture.residual, where='pre') against hidden_states[layer]; the
    last hidden state is after the final norm (transformers' convention), so layers < n_layers are compared."""
    name, _, checkpoint, tokens, logits, hidden = variant
    model = build_model(checkpoint, form=form)
    max_context = checkpoint.config.max_context
    for layer in range(checkpoint.config.n_layers):
        resid, ours = capture.residual_and_logits(model, tokens, layer=layer, where="pre", max_context=max_context)
        _close(resid, hidden[layer], f"{name} {form.value} residual before block {layer}")
    _close(ours, logits, f"{name} {form.value} logits")
    assert (np.asarray(ours).argmax(-1) == logits.argmax(-1)).all()


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])
def test_packed_sequences_equal_transformers_run_alone(name, tmp_path):
    """A trie-packed batch (shared prefixes, branches at different depths): each sequence's logits at its own rows
    equal transformers' on that sequence alone. Packed branches share positions, so GPT-2's learned positions must
    be read at the packed positions, not the row index."""
    folder = fs.write_hf(name, tmp_path / name)
    checkpoint = read_checkpoint(folder)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
    rng = np.random.default_rng(1)
    vocab = checkpoint.config.vocab_size
    prefix = list(rng.integers(1, vocab, 9))
    seqs = [prefix + list(rng.integers(1, vocab, n)) for n in (1, 4, 6)] + [prefix[:3] + list(rng.integers(1, vocab, 5))]
    packed = pack_trie(seqs)
    ids, packing = stack_rows([packed], 40, n_rows=1)
    model = build_model(checkpoint, form=Form.SCAN)
    logits = np.asarray(capture.logits(model, ids, max_context=checkpoint.config.max_context, packing=packing))
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            want = reference(torch.tensor([seq])).logits[0].numpy()
        _close(logits[0, packed.paths[i]], want, f"{name} packed sequence {i} ({len(seq)} tokens)")


# --- variants of the config switches ------------------------------------------------------------------------------

SWITCHES = {
    # untied head, raw q.k scores, a 96-wide MLP, the exact erf GELU
    "gpt2": dict(tie_word_embeddings=False, scale_attn_weights=False, n_inner=96, activation_function="gelu"),
    # no attention biases, half the head rotary, another base, gelu_fast (the tanh GELU), a tied head
    "gpt_neox": dict(attention_bias=False, rotary_pct=0.5, rotary_emb_base=500, hidden_act="gelu_fast",
                     tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_other_switch_values_equal_transformers(name, tmp_path):
    folder = fs.write_hf(name, tmp_path / name, seed=3, **SWITCHES[name])
    checkpoint = read_checkpoint(folder)
    tokens = np.random.default_rng(2).integers(0, checkpoint.config.vocab_size, (2, 20))
    logits, hidden = fs.reference(folder, tokens)
    model = build_model(checkpoint, form=Form.SCAN)
    resid, ours = capture.residual_and_logits(model, tokens, layer=2, where="pre",
                                              max_context=checkpoint.config.max_context)
    _close(resid, hidden[2], f"{name} {SWITCHES[name]} residual before block 2")
    _close(ours, logits, f"{name} {SWITCHES[name]} logits")


# --- old file layouts: bare GPT-2 names, stored buffers -----------------------------------------------------------


def _rewrite(folder: pathlib.Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = edit(load_file(str(path)))
    save_file(tensors, str(path), metadata={"format": "pt"})


def _logits(folder, tokens):
    checkpoint = read_checkpoint(folder)
    return np.asarray(capture.logits(build_model(checkpoint, form=Form.SCAN), tokens,
                                     max_context=checkpoint.config.max_context))


def test_gpt2_saved_from_the_bare_model_with_its_mask_buffers_reads_the_same(tmp_path):
    """openai-community/gpt2's own file: no `transformer.` prefix, an `attn.bias` causal-mask table and `attn.masked_bias`
    per layer (uint8 in old saves): dropped, as transformers ignores them. A tensor given both with and without the
    prefix, or one that is not part of GPT-2 (a cross-attention), is refused."""
    folder = fs.write_hf("gpt2", tmp_path / "new")
    tokens = np.random.default_rng(3).integers(0, 512, (1, 16))
    want = _logits(folder, tokens)
    n = fs.TINY_CONFIGS["gpt2"]["n_positions"]

    def bare(tensors):
        out = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        for i in range(3):
            out[f"h.{i}.attn.bias"] = np.tril(np.ones((n, n), np.uint8))[None, None]
            out[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        return out

    _rewrite(folder, bare)
    np.testing.assert_array_equal(_logits(folder, tokens), want)
    _rewrite(folder, lambda t: t | {"transformer.wte.weight": t["wte.weight"]})
    with pytest.raises(InputError, match="both with and without"):
        read_checkpoint(folder)
    _rewrite(folder, lambda t: {k: v for k, v in t.items() if k != "transformer.wte.weight"}
             | {"h.0.crossattention.c_attn.weight": t["h.0.attn.c_attn.weight"]})
    with pytest.raises(InputError, match="unexpected weight h.0.crossattention.c_attn.weight"):
        read_checkpoint(folder)


def test_gpt_neox_with_old_buffers_reads_the_same_and_a_wrong_inv_freq_is_refused(tmp_path):
    """Pythia's files (saved by transformers 4.2x) hold per-layer attention.bias (bool), attention.masked_bias and
    rotary_emb.inv_freq; transformers ignores the first two and recomputes the frequencies, so inv_freq is checked
    against the config's (float16 as stored) and dropped. transformers 5 names the head lm_head: read as embed_out."""
    folder = fs.write_hf("gpt_neox", tmp_path / "neox")
    tokens = np.random.default_rng(4).integers(0, 512, (1, 16))
    want = _logits(folder, tokens)
    inv_freq = (1.0 / 10000 ** (np.arange(0, 4, 2) / 4)).astype(np.float16)

    def old(tensors, freq=inv_freq):
        out = {("lm_head.weight" if k == "embed_out.weight" else k): v for k, v in tensors.items()}
        for i in range(3):
            p = f"gpt_neox.layers.{i}.attention."
            out |= {p + "bias": np.tril(np.ones((256, 256), bool))[None, None],
                    p + "masked_bias": np.array(-1e9, np.float32), p + "rotary_emb.inv_freq": freq}
        return out

    _rewrite(folder, old)
    np.testing.assert_array_equal(_logits(folder, tokens), want)
    folder = fs.write_hf("gpt_neox", tmp_path / "wrong")
    _rewrite(folder, lambda t: old(t, freq=(1.0 / 500 ** (np.arange(0, 4, 2) / 4)).astype(np.float32)))
    with pytest.raises(InputError, match="rotary_emb.inv_freq .* is not the RoPE of the config"):
        read_checkpoint(folder)


# --- config keys -------------------------------------------------------------------------------------------------


def _config(name: str, **changes) -> dict:
    raw = json.loads(json.dumps(fs.real_width(name)))
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def test_the_real_configs_read_as_their_models():
    gpt2 = model_config_from_hf(_config("gpt2"), source="gpt2/config.json")
    assert (gpt2.d_model, gpt2.n_layers, gpt2.n_heads, gpt2.d_ffn, gpt2.max_context, gpt2.vocab_size) == (
        768, 12, 12, 3072, 1024, 50257)
    pythia = model_config_from_hf(_config("gpt_neox"), source="pythia-70m/config.json")
    assert (pythia.d_model, pythia.n_layers, pythia.head_dim, pythia.rotary_dim, pythia.rope_base,
            pythia.parallel_residual, pythia.tie_embeddings) == (512, 6, 64, 16, 10000.0, True, False)


@pytest.mark.parametrize("changes", [
    dict(rotary_pct=..., rotary_emb_base=...),                                    # transformers' defaults 0.25, 1e4
    dict(rotary_pct=1.0),
    dict(rotary_pct=..., rotary_emb_base=...,                                     # transformers 5's own files
         rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}),
    dict(rotary_pct=0.5, rotary_emb_base=500, partial_rotary_factor=0.5, rope_theta=500),  # transformers 4.4x files
    dict(rope_scaling=None),
])
def test_gpt_neox_rope_resolves_as_transformers_does(changes):
    raw = _config("gpt_neox", **changes)
    ours = model_config_from_hf(raw, source="config.json")
    theirs = transformers.GPTNeoXConfig(**{k: v for k, v in raw.items() if k != "model_type"}).rope_parameters
    assert ours.rope_base == theirs["rope_theta"]
    assert (ours.rotary_dim or ours.head_dim) == int(ours.head_dim * theirs["partial_rotary_factor"])


@pytest.mark.parametrize("name, changes, message", [
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("gpt2", dict(add_cross_attention=True), "add_cross_attention"),
    ("gpt2", dict(activation_function="relu"), "activation_function"),
    ("gpt2", dict(n_embd=770), "n_embd 770 is not a multiple of n_head 12"),
    ("gpt2", dict(some_new_switch=1), "some_new_switch"),
    ("gpt_neox", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    ("gpt_neox", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}), "rope_parameters.rope_type"),
    ("gpt_neox", dict(partial_rotary_factor=0.5), "key 'partial_rotary_factor' = 0.5"),  # rotary_pct says 0.25
    ("gpt_neox", dict(rope_theta=20.0), "key 'rope_theta' = 20.0"),              # transformers 5 would ignore it
    ("gpt_neox", dict(rope_parameters={"rope_theta": 500.0}), "key 'rotary_emb_base' = 10000"),  # which one?
    ("gpt_neox", dict(rotary_pct=0.05), "gives 3 rotary dims"),                  # int(64 * 0.05): odd
    ("gpt_neox", dict(rotary_pct=1.5), "rotary_pct"),
    ("gpt_neox", dict(head_dim=32), "head_dim"),
    ("gpt_neox", dict(hidden_act="silu"), "hidden_act"),
    ("gpt_neox", dict(use_parallel_residual=1), "use_parallel_residual"),
])
def test_unsupported_config_values_are_refused_in_one_line(name, changes, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")) as error:
        model_config_from_hf(_config(name, **changes), source="config.json")
    assert "\n" not in str(error.value)


# --- GGUF: llama.cpp's converter ----------------------------------------------------------------------------------

# convert_hf_to_gguf.py's GPTNeoXModel reads hparams["rotary_pct"], which transformers 5 folds into rope_parameters
# (its AutoConfig.to_dict() has no rotary_pct): the converter is run unchanged but for that one lookup.
_NEOX_CONVERTER = '''
import runpy, sys
vendor = sys.argv.pop(1)
sys.path[:0] = [vendor, vendor + "/gguf-py"]
from conversion.base import ModelBase
_load = ModelBase.load_hparams
def load_hparams(dir_model, is_mistral_format):
    hparams = _load(dir_model, is_mistral_format)
    hparams.setdefault("rotary_pct", hparams["rope_parameters"]["partial_rotary_factor"])
    return hparams
ModelBase.load_hparams = staticmethod(load_hparams)
sys.argv[0] = vendor + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
'''


GPT2_VOCAB = 50257


def _gguf(name: str, tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(HF folder, its GGUF by llama.cpp's converter); the folder carries GPT-2's real tokenizer (llama.cpp's vocab
    fixture: the converter recognises its pre-tokenizer), so the vocabulary is GPT-2's 50257."""
    if name == "gpt2":
        folder = fs.write_hf(name, tmp / name, vocab="llama.cpp")
        return folder, fs.write_gguf(name, folder, tmp / f"{name}.gguf")
    gpt2_folder = fs.write_hf("gpt2", tmp / "gpt2", vocab="llama.cpp")  # for its tokenizer files
    folder = fs.write_hf(name, tmp / name, vocab_size=GPT2_VOCAB)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        (folder / file).write_bytes((gpt2_folder / file).read_bytes())
    wrapper = tmp / "convert_neox.py"
    wrapper.write_text(_NEOX_CONVERTER)
    out = tmp / f"{name}.gguf"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)
    result = subprocess.run([sys.executable, str(wrapper), str(fs.VENDOR), str(folder), "--outfile", str(out),
                             "--outtype", "f32"], env=env, capture_output=True, text=True, timeout=600, check=False,
                            cwd=str(fs.VENDOR))
    assert result.returncode == 0 and out.is_file(), (result.stdout + result.stderr)[-2000:]
    return folder, out


@pytest.mark.parametrize("name", VARIANTS)
def test_llama_cpp_gguf_equals_transformers(name, tmp_path):
    folder, path = _gguf(name, tmp_path)
    checkpoint = read_checkpoint(path)
    config = checkpoint.config
    assert config.architecture == name.removesuffix("_sequential") and config.norm == "layer"
    assert config.parallel_residual == (name == "gpt_neox") and checkpoint.ignored_fields == ()
    tokens = np.random.default_rng(5).integers(0, config.vocab_size, (2, 20))
    logits, hidden = fs.reference(folder, tokens)
    resid, ours = capture.residual_and_logits(build_model(checkpoint, form=Form.SCAN), tokens, layer=2, where="pre",
                                              max_context=config.max_context)
    _close(resid, hidden[2], f"{name} GGUF residual before block 2")
    _close(ours, logits, f"{name} GGUF logits")
    text = "Hello world, it's 2024!  Tabs\tand   spaces\n\nnew lines ü 東京"
    want = transformers.AutoTokenizer.from_pretrained(str(folder)).encode(text)
    assert checkpoint.tokenizer.encode(text) == want == read_checkpoint(folder).tokenizer.encode(text)


# --- a tokenizer without chat template ----------------------------------------------------------------------------


def test_a_tokenizer_without_chat_template_encodes_plainly_and_prompts_plainly(tmp_path):
    """GPT-2 and Pythia ship no chat template: plain text encodes (no BOS added); rendering a chat is refused in one
    line, and the MC prompt formats (harness.prompts.formats) prompt such a base model plainly, the user message
    then the answer prefix, never through a guessed template."""
    from harness.data.records import MCQuestion
    from harness.prompts import formats

    checkpoint = read_checkpoint(fs.write_hf("gpt2", tmp_path / "gpt2"))
    tokenizer = checkpoint.tokenizer
    assert tokenizer.chat_template is None and tokenizer.add_bos is False
    assert tokenizer.decode(tokenizer.encode("the cat sat")) == "the cat sat"
    with pytest.raises(InputError, match="has no chat template"):
        tokenizer.render_chat([{"role": "user", "content": "hi"}])
    question = MCQuestion(question="2 + 2?", choices=("1", "2", "3", "4"), answer=3, subject="math", source="test",
                          qid="q0")
    text = formats.context_text(tokenizer, question, "letter")
    assert text.startswith(formats.user_message(question, "letter")) and text.endswith(formats.LETTER_ANSWER_PREFIX)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_a_layer_norm_epsilon_is_refused_where_the_architecture_uses_rms_norm(tmp_path):
    """gguf_reader lets either epsilon key through (gpt2 / gptneox give layer_norm_epsilon); a llama file giving the
    LayerNorm one instead, or both, is refused in one line."""
    from test_gguf_reader import write_tiny_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1, drop_keys=("llama.attention.layer_norm_rms_epsilon",),
                    extra_keys={"llama.attention.layer_norm_epsilon": 1e-5})
    with pytest.raises(InputError, match="layer_norm_rms_epsilon is missing .layer_norm_epsilon is given: LayerNorm"):
        read_checkpoint(path)
    write_tiny_gguf(path, n_layers=1, extra_keys={"llama.attention.layer_norm_epsilon": 1e-5})
    with pytest.raises(InputError, match="llama.attention.layer_norm_epsilon=.* is not supported"):
        read_checkpoint(path)
    write_tiny_gguf(path, n_layers=1, extra_keys={"llama.use_parallel_residual": True})
    with pytest.raises(InputError, match="use_parallel_residual=True is not supported"):
        read_checkpoint(path)
