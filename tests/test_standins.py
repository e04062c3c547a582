"""The stand-ins of tests/standins.py are read by the harness as the real files would be: one tokenizer with Phi-3's
specials and template in all layouts, one model (the same logits from the HF folder, the hub-cache id and the F16
GGUF), the saex SAE from both layouts, and the Hendrycks val folder; and the tokenizer has the SentencePiece
properties the letter readings must survive (BRIEF §7)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import standins as S

from harness.data.records import MCQuestion
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.model.sources import read_checkpoint
from harness.prompts.formats import build_prompts, context_text, continuations, letter_probe

REPO_ID = "microsoft/Phi-3-mini-4k-instruct"
QUESTION = MCQuestion(question="What is the capital of France?", choices=("Berlin", "Paris", "Rome", "Madrid"),
                      answer=1, subject="geography", source="test", qid="test:0")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{layout: Checkpoint} read through read_checkpoint from the HF folder, the hub-cache id and the GGUF."""
    root = tmp_path_factory.mktemp("standins")
    folder = S.phi3_hf_folder(root / "Phi-3-mini-4k-instruct")
    cache = S.phi3_hub_cache(root / "hub", repo_id=REPO_ID)
    gguf_path = S.phi3_gguf(root / "phi-3-mini-4k-instruct.fp16.gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        hub = read_checkpoint(REPO_ID)
    return {"hf-folder": read_checkpoint(str(folder)), "hub-id": hub, "gguf": read_checkpoint(str(gguf_path))}


def test_the_sentencepiece_letter_facts_hold_on_the_stand_in_tokenizer(layouts):
    tok = layouts["hf-folder"].tokenizer
    lone = tok.encode("A", add_bos=False)
    assert [tok.tokenizer.id_to_token(i) for i in lone] == ["▁A"]           # a lone "A" is "▁A"
    assert len(tok.encode(" A", add_bos=False)) == 2                       # a lone " A" is two tokens
    ctx = tok.encode("Answer: (", add_bos=False)
    joined = tok.encode("Answer: (A", add_bos=False)
    assert joined[: len(ctx)] == ctx and len(joined) == len(ctx) + 1 and joined[-1] != lone[0]  # after "(": another id


def test_phi3_special_tokens_sit_at_their_real_ids_in_every_layout(layouts):
    for name, ck in layouts.items():
        vocab = ck.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
        assert {t: vocab[t] for t in S.PHI3_ADDED_TOKENS} == S.PHI3_ADDED_TOKENS, name
        assert ck.tokenizer.encode("<|user|>", add_bos=False) == [32010], name
        assert ck.config.vocab_size == S.PHI3_VOCAB_SIZE and ck.config.n_layers == 24, name


@pytest.mark.parametrize("text", ["the first time", "Answer: (A", "The capital of France is Paris.", "naïve 東京 x2"])
def test_hf_and_gguf_tokenizers_agree_on_plain_text(layouts, text):
    assert layouts["hf-folder"].tokenizer.encode(text) == layouts["gguf"].tokenizer.encode(text)


def test_hf_and_gguf_tokenizers_agree_on_the_chat_prompt(layouts):
    texts = [context_text(ck.tokenizer, QUESTION, "letter") for ck in layouts.values()]
    assert len(set(texts)) == 1
    assert layouts["hf-folder"].tokenizer.encode(texts[0]) == layouts["gguf"].tokenizer.encode(texts[0])


def test_the_three_model_layouts_hold_the_same_weights_and_give_the_same_logits(layouts):
    reference = layouts["hf-folder"]
    for name, ck in layouts.items():
        # GGUF stores rms_norm_eps as float32 (1e-5 -> 9.99999975e-06); everything else is identical
        assert dataclasses.replace(ck.config, norm_eps=reference.config.norm_eps) == reference.config, name
        assert ck.config.norm_eps == pytest.approx(reference.config.norm_eps, rel=1e-7), name
        assert ck.weights.keys() == reference.weights.keys(), name
        for key, w in reference.weights.items():
            np.testing.assert_array_equal(ck.weights[key], w, err_msg=f"{name}: {key}")
    tokens = np.array([reference.tokenizer.encode(context_text(reference.tokenizer, QUESTION, "letter") + "A")])
    logits = {name: np.asarray(capture.logits(build_model(ck, form=Form.SCAN), tokens, max_context=ck.config.max_context))
              for name, ck in layouts.items()}
    assert np.isfinite(logits["hf-folder"]).all() and logits["hf-folder"].std() > 0
    for name, got in logits.items():
        np.testing.assert_allclose(got, logits["hf-folder"], rtol=1e-5, atol=1e-5, err_msg=name)


def test_prompts_render_with_phi3_template_and_letters_come_from_the_joined_encoding(layouts):
    tok = layouts["hub-id"].tokenizer
    q = QUESTION
    rendered = context_text(tok, q, "letter") + continuations(q, "letter")[1]
    assert rendered == (f"<|user|>\n{q.question}\nChoices:\n(A) Berlin\n(B) Paris\n(C) Rome\n(D) Madrid<|end|>\n"
                        "<|assistant|>\nAnswer: (B")
    prompts = build_prompts(tok, q, "letter", max_len=4096)
    probe = letter_probe(prompts)
    assert probe == tuple(tok.encode(prompts.context + letter)[-1] for letter in "ABCD")
    assert not set(probe) & {tok.encode(letter, add_bos=False)[0] for letter in "ABCD"}  # never the lone "▁A"


def test_the_saex_stand_in_carries_saex_tensor_names_shapes_and_float16(tmp_path):
    from safetensors import safe_open

    bare = S.saex_sae_file(tmp_path, d_model=64, d_sae=4096)
    hub = S.saex_sae_hub(tmp_path / "hub", d_model=64, d_sae=4096)
    assert bare.name == f"{S.SAEX_NAME}.safetensors" and hub.name == S.SAEX_NAME
    assert (hub / "cfg.json").is_file() and (hub / "sae_weights.safetensors").is_file()
    shapes = {"W_enc": (64, 4096), "b_enc": (4096,), "scaling_factor": (4096,), "W_dec": (4096, 64), "b_dec": (64,),
              "s_gate": (4096,), "b_gate": (4096,)}
    for path in (bare, hub / "sae_weights.safetensors"):
        with safe_open(str(path), framework="numpy") as f:
            got = {k: f.get_tensor(k) for k in f.keys()}
        assert {k: v.shape for k, v in got.items()} == shapes
        assert all(v.dtype == np.float16 for v in got.values())
        np.testing.assert_allclose(np.linalg.norm(got["W_dec"].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_both_saex_layouts_load_as_the_same_gated_sae(tmp_path):
    import jax.numpy as jnp

    from harness.sae import sae as sae_lib
    from harness.sae.formats import load_any

    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 64)), jnp.float32)
    bare, _ = load_any(S.saex_sae_file(tmp_path, d_model=64, d_sae=2048), layer=20, hook="resid_pre")
    hub, _ = load_any(S.saex_sae_hub(tmp_path / "hub", d_model=64, d_sae=2048), layer=20, hook="resid_pre")
    assert bare.architecture == "gated" and hub.architecture == "gated"
    np.testing.assert_allclose(np.asarray(sae_lib.encode(hub, x)), np.asarray(sae_lib.encode(bare, x)), rtol=1e-6, atol=1e-6)


def test_the_hendrycks_val_folder_loads_every_row(tmp_path):
    from harness.data.mmlu import load_hendrycks_csv

    folder = S.hendrycks_val(tmp_path, n_per_subject=4)
    assert sorted(p.name for p in folder.iterdir()) == [f"{s}_val.csv" for s in S.SUBJECTS]
    assert not (folder / f"{S.SUBJECTS[0]}_val.csv").read_text().startswith("question,")  # no header row
    questions, report = load_hendrycks_csv(folder)
    assert report.n_read == report.n_kept == 12 and report.n_bad == 0
    rows = S.hendrycks_rows(S.SUBJECTS[0], 4)
    first = [q for q in questions if q.question == rows[0][0]]
    assert len(first) == 1 and first[0].choices == tuple(rows[0][1:5]) and first[0].answer_letter == rows[0][5]


def test_the_hub_cache_id_is_found_through_hf_home_too(tmp_path, monkeypatch):
    S.phi3_hub_cache(tmp_path / "home" / "hub", repo_id=REPO_ID)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    ck = read_checkpoint(REPO_ID)
    assert ck.config.architecture == "phi3" and "snapshots" in ck.source
    assert ck.tokenizer.chat_template == S.PHI3_CHAT_TEMPLATE


def test_user_files_writes_every_stand_in_where_it_says(tmp_path):
    files = S.user_files(tmp_path, d_sae=512, n_per_subject=2)
    assert (files.hf_folder / "model.safetensors.index.json").is_file() and files.gguf.suffix == ".gguf"
    assert (files.hub_cache / "models--microsoft--Phi-3-mini-4k-instruct" / "refs" / "main").is_file()
    assert files.sae_file.suffix == ".safetensors" and files.sae_hub.name == S.SAEX_NAME
    assert sorted(p.name for p in files.data_val.iterdir()) == [f"{s}_val.csv" for s in S.SUBJECTS]
    index = __import__("json").loads((files.hf_folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.layers.23.mlp.gate_up_proj.weight" in index["weight_map"]
