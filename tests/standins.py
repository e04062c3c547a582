"""Faithful miniature stand-ins of the original's inputs, built from the real formats' specifications.

What a researcher brings for the phi3-mini profile, in miniature (tiny widths, the real layouts and names):
  phi3_tokenizer_files  a SentencePiece-BPE (Llama/Phi-3) tokenizer.json + tokenizer_config.json with Phi-3's special
                        tokens at their real ids (32000..32010) and Phi-3's real chat template;
  phi3_hf_folder        a random-weight Phi-3 (24 layers) as a sharded Hugging Face folder;
  phi3_hub_cache        the same folder as a model id in a hub-cache layout (point HF_HUB_CACHE at the returned root);
  phi3_gguf             the same weights as an F16 GGUF with llama.cpp's phi3 tensor names and metadata keys;
  saex_sae_file / saex_sae_hub  a saex gated SAE, as a bare .safetensors and as saex's <name>/cfg.json +
                        <name>/sae_weights.safetensors upload;
  gpt2_res_jb_folder    a SAELens gpt2-small-res-jb folder as jbloom/GPT2-Small-SAEs-Reformatted holds it
                        (blocks.<L>.hook_resid_pre/ cfg.json in the SAELens < 2.0 layout, sae_weights.safetensors,
                        sparsity.safetensors);
  hendrycks_val         a Hendrycks data/val folder of header-less <subject>_val.csv files.
Every builder takes a folder and returns the path(s) it wrote. The facts each follows are cited where used;
none is taken from the harness's own readers (the tests then check that the harness reads them).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import gguf
import ml_dtypes
import numpy as np
import tokenizers
from safetensors.numpy import save_file
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

# ---------------------------------------------------------------------------------------------- tokenizer

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json "chat_template" (2024-05 revision), verbatim; the same string
# is quoted with its source in tests/test_prompts.py and by guidance-ai's chat templates ("[05/08/24] .../tokenizer_config.json#L119").
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Phi-3's added tokens and ids (torchtune models/phi3/_tokenizer.py PHI3_SPECIAL_TOKENS; the model's added_tokens.json).
PHI3_ADDED_TOKENS = {
    "<|endoftext|>": 32000, "<|assistant|>": 32001, "<|placeholder1|>": 32002, "<|placeholder2|>": 32003,
    "<|placeholder3|>": 32004, "<|placeholder4|>": 32005, "<|system|>": 32006, "<|end|>": 32007,
    "<|placeholder5|>": 32008, "<|placeholder6|>": 32009, "<|user|>": 32010,
}
# Which of them strip the whitespace after them (transformers integrations/ggml.py GGUFPhi3Converter, as in
# Phi-3's tokenizer.json): all but <|endoftext|>; </s> too.
PHI3_RSTRIP = {t for t in PHI3_ADDED_TOKENS if t != "<|endoftext|>"} | {"</s>"}
SPM_SIZE = 32000           # Llama's sentencepiece vocabulary: <unk>, <s>, </s>, 256 byte pieces, then pieces
PHI3_VOCAB_SIZE = 32064    # config.json vocab_size (the embedding is padded past the 32011 real tokens)
BOS, EOS, UNK = "<s>", "<|endoftext|>", "<unk>"  # tokenizer_config.json bos/eos(=pad)/unk tokens
# sentencepiece_model.proto piece types, as gguf.TokenType numbers them (llama.cpp's vocabulary types).
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.UNKNOWN),
                                          int(gguf.TokenType.CONTROL), int(gguf.TokenType.UNUSED), int(gguf.TokenType.BYTE))

CORPUS = """The first time the students met the question, they read it twice. Which of the following is true?
Answer: (A) the first choice (B) the second choice (C) the third choice (D) the fourth choice. Choices:
A cell is the smallest unit of life. The heart pumps blood through the body. Water boils at one hundred degrees.
The capital of France is Paris, and the capital of Italy is Rome. A group is a set with an operation.
In the year of the war the king sent his army to the north. The function returns the value of the sum.
Light travels faster than sound; the speed of light is constant. What is the value of x in the equation?
An atom has a nucleus of protons and neutrons. The planet moves around the star in an orbit.
She said that the theory explains the results of the experiment, but the data do not support it.
Question: which statement is correct? Answer: the correct statement is the one that follows from the premise.
"""


@functools.lru_cache(maxsize=4)
def sentencepiece_pieces(corpus: str = CORPUS, *, n_trained: int = 600) -> tuple[tuple[str, float, int], ...]:
    """A miniature Llama/Phi-3 sentencepiece model as its proto lists it: (piece, score, type) for ids 0..31999.

    Ids 0-2 <unk> <s> </s>, 3-258 the byte pieces <0x00>..<0xFF> (Llama's layout, byte_fallback=true), then BPE pieces
    trained here with the `tokenizers` BpeTrainer (score = -merge rank, so earlier merges win, as sentencepiece BPE
    scores them; pieces never mix letters with punctuation, like sentencepiece's split_by_unicode_script), then
    unreachable one-character filler pieces (private-use code points) up to 32000 entries.
    """
    trainer_tok = tokenizers.Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁?\p{L}+|▁?\p{N}|▁?[^\p{L}\p{N}▁\s]+|▁+|\s+"), behavior="isolated")
    trainer_tok.train_from_iterator([corpus], trainers.BpeTrainer(vocab_size=n_trained, show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in trained["merges"]]
    chars = [p for p, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if len(p) == 1]
    pieces = [(UNK, 0.0, UNKNOWN), (BOS, 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    pieces += [(p, -float(i), NORMAL) for i, p in enumerate(merged)]
    pieces += [(c, -float(len(merged) + i), NORMAL) for i, c in enumerate(chars)]
    fill = SPM_SIZE - len(pieces)
    pieces += [(chr(0xF0000 + i), -1e6 - i, NORMAL) for i in range(fill)]
    assert len(pieces) == SPM_SIZE and len({p for p, _, _ in pieces}) == SPM_SIZE
    return tuple(pieces)


def phi3_tokenizer(pieces: Sequence[tuple[str, float, int]] | None = None) -> tokenizers.Tokenizer:
    """The tokenizer.json transformers' LlamaConverter makes of a sentencepiece BPE model (convert_slow_tokenizer.py):

    BPE with merges from `generate_merges(vocab, scores)`, unk <unk>, fuse_unk, byte_fallback; normalizer
    Prepend("▁") + Replace(" ", "▁") and no pre-tokenizer (legacy layout, as Phi-3's tokenizer.json has it); decoder
    Replace("▁", " "), ByteFallback, Fuse, Strip(left 1); then Phi-3's added tokens at their ids.
    """
    from transformers.tokenization_utils_base import generate_merges

    if pieces is None:
        return tokenizers.Tokenizer.from_str(_default_tokenizer_json())
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    merges = generate_merges(vocab, {p: s for p, s, _ in pieces})
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False, rstrip=t in PHI3_RSTRIP)
                            for t in (UNK, BOS, "</s>")])
    for token, tid in PHI3_ADDED_TOKENS.items():  # in id order, so each lands on its id
        assert tok.get_vocab_size(with_added_tokens=True) == tid
        tok.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False, rstrip=token in PHI3_RSTRIP)])
    return tok


@functools.lru_cache(maxsize=1)
def _default_tokenizer_json() -> str:
    return phi3_tokenizer(sentencepiece_pieces()).to_str()


def phi3_tokenizer_config() -> dict:
    """tokenizer_config.json of Phi-3-mini-4k-instruct, in the fields a reader uses (add_bos/eos false: the hub file
    since 2024, as torchtune PR #1778 quotes it; bos <s>, eos and pad <|endoftext|>, unk <unk>)."""
    return {"add_bos_token": False, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
            "unk_token": UNK, "chat_template": PHI3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "legacy": False,
            "model_max_length": 4096, "padding_side": "left", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "use_default_system_prompt": False}


def phi3_tokenizer_files(directory) -> pathlib.Path:
    """Write tokenizer.json + tokenizer_config.json into `directory`; returns it."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    phi3_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(phi3_tokenizer_config(), indent=2))
    return directory


# ---------------------------------------------------------------------------------------------- model

# Phi-3-mini-4k-instruct config.json (the hub file; key names as transformers' Phi3Config reads them), tiny widths.
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128, num_hidden_layers=24)


def phi3_config(**overrides) -> dict:
    """config.json of Phi-3-mini-4k-instruct with the tiny widths of TINY (real: 3072 / 32 / 32 / 8192 / 32 layers)."""
    return {
        "_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config", "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
        "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 4096, "model_type": "phi3", "original_max_position_embeddings": 4096,
        "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.2",
        "use_cache": True, "vocab_size": PHI3_VOCAB_SIZE, **TINY, **overrides,
    }


def _exact(rng, shape, *, scale: int = 1024, span: int = 40, offset: float = 0.0) -> np.ndarray:
    """Random k/scale values (|k| <= span): exact in bfloat16 and float16, so every layout holds the same numbers."""
    return (offset + rng.integers(-span, span + 1, size=shape) / scale).astype(np.float32)


def phi3_weights(config: dict, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Phi3ForCausalLM's state-dict names (fused qkv_proj [q; k; v] and gate_up_proj [gate; up])."""
    rng = np.random.default_rng(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head = d // config["num_attention_heads"]
    qkv = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * head
    w = {"model.embed_tokens.weight": _exact(rng, (v, d), scale=64), "model.norm.weight": _exact(rng, (d,), scale=64, offset=1.0),
         "lm_head.weight": _exact(rng, (v, d), scale=256)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": _exact(rng, (d,), scale=64, offset=1.0),
              p + "post_attention_layernorm.weight": _exact(rng, (d,), scale=64, offset=1.0),
              p + "self_attn.qkv_proj.weight": _exact(rng, (qkv, d), scale=256),
              p + "self_attn.o_proj.weight": _exact(rng, (d, d), scale=512),
              p + "mlp.gate_up_proj.weight": _exact(rng, (2 * f, d), scale=256),
              p + "mlp.down_proj.weight": _exact(rng, (d, f), scale=512)}
    return w


def phi3_hf_folder(directory, *, seed: int = 0, config: dict | None = None) -> pathlib.Path:
    """A sharded HF folder: config.json, model-0000{1,2}-of-00002.safetensors (bfloat16, as the hub files are) with
    model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}), tokenizer.json, tokenizer_config.json."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = phi3_config() if config is None else config
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in phi3_weights(config, seed=seed).items()}
    half = config["num_hidden_layers"] // 2

    def shard_of(name: str) -> int:
        if name.startswith("model.layers."):
            return 1 if int(name.split(".")[2]) < half else 2
        return 1 if name == "model.embed_tokens.weight" else 2

    weight_map = {}
    for shard in (1, 2):
        file = f"model-{shard:05d}-of-00002.safetensors"
        part = {k: v for k, v in weights.items() if shard_of(k) == shard}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map |= {k: file for k in part}
    total = sum(v.nbytes for v in weights.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    phi3_tokenizer_files(directory)
    return directory


def phi3_hub_cache(root, *, repo_id: str = "microsoft/Phi-3-mini-4k-instruct", seed: int = 0) -> pathlib.Path:
    """`root` as a hub cache holding `repo_id` (set HF_HUB_CACHE=root): huggingface_hub's cache layout
    models--{org}--{name}/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/main = <commit>}."""
    root = pathlib.Path(root)
    repo = root / f"models--{repo_id.replace('/', '--')}"
    staging = phi3_hf_folder(root / ".staging", seed=seed)
    commit = hashlib.sha1(repo_id.encode() + str(seed).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(staging.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
        file.unlink()
    staging.rmdir()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def phi3_gguf(path, *, seed: int = 0, config: dict | None = None) -> pathlib.Path:
    """The same model as llama.cpp's convert_hf_to_gguf.py writes Phi-3 (Phi3MiniModel), F16 with F32 norms.

    Tensor names (gguf-py constants.py MODEL_ARCH.PHI3): token_embd, output_norm, output, blk.N.{attn_norm, attn_qkv,
    attn_output, ffn_norm, ffn_up (the fused [gate; up]), ffn_down}; metadata through GGUFWriter's add_* (phi3.* keys),
    tokenizer.ggml.model "llama" with the sentencepiece pieces, scores and types, Phi-3's added tokens as CONTROL
    and the padding ids as "[PAD{id}]" UNUSED (llama.cpp's _create_vocab_sentencepiece).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = phi3_config() if config is None else config
    w = phi3_weights(config, seed=seed)
    d, heads = config["hidden_size"], config["num_attention_heads"]
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_name("Phi3")  # llama.cpp keys the Phi-3 RSTRIP token attributes on general.name containing "phi3"
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(d // heads)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_sliding_window(config["sliding_window"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    pieces = sentencepiece_pieces()
    tokens = [p for p, _, _ in pieces] + list(PHI3_ADDED_TOKENS)
    scores = [s for _, s, _ in pieces] + [0.0] * len(PHI3_ADDED_TOKENS)
    types = [t for _, _, t in pieces] + [CONTROL] * len(PHI3_ADDED_TOKENS)
    pads = range(len(tokens), config["vocab_size"])
    tokens += [f"[PAD{i}]" for i in pads]
    scores += [-1000.0] * len(pads)
    types += [UNUSED] * len(pads)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(PHI3_ADDED_TOKENS[EOS])
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(PHI3_ADDED_TOKENS[EOS])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(PHI3_CHAT_TEMPLATE)

    def f16(a):
        return a.astype(np.float16)

    writer.add_tensor("token_embd.weight", f16(w["model.embed_tokens.weight"]))
    for i in range(config["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", w[p + "input_layernorm.weight"])
        writer.add_tensor(b + "attn_qkv.weight", f16(w[p + "self_attn.qkv_proj.weight"]))
        writer.add_tensor(b + "attn_output.weight", f16(w[p + "self_attn.o_proj.weight"]))
        writer.add_tensor(b + "ffn_norm.weight", w[p + "post_attention_layernorm.weight"])
        writer.add_tensor(b + "ffn_up.weight", f16(w[p + "mlp.gate_up_proj.weight"]))
        writer.add_tensor(b + "ffn_down.weight", f16(w[p + "mlp.down_proj.weight"]))
    writer.add_tensor("output_norm.weight", w["model.norm.weight"])
    writer.add_tensor("output.weight", f16(w["lm_head.weight"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------------------------------------- SAE

SAEX_NAME = "l20-test-run-5-7.00E-06"  # the folder of nev/phi-3-4k-saex-test the original used (BRIEF §1)


def saex_tensors(d_model: int, d_sae: int = 49_152, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A gated saex SAE's tensors (BRIEF §7; saex/sae.py `save`): W_enc [d, h], b_enc [h], scaling_factor [h],
    W_dec [h, d] (unit rows, saex's restrict_dec_norm="exact"), b_dec [d], s_gate [h], b_gate [h]; float16 (save_dtype)."""
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(d_sae, d_model)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    t = {"W_enc": rng.normal(0, 1 / np.sqrt(d_model), (d_model, d_sae)), "b_enc": rng.normal(0, 0.1, d_sae),
         "scaling_factor": rng.uniform(0.5, 1.5, d_sae), "W_dec": W_dec, "b_dec": rng.normal(0, 0.1, d_model),
         "s_gate": rng.normal(0, 0.5, d_sae), "b_gate": rng.normal(0, 0.1, d_sae)}
    return {k: np.asarray(v, np.float16) for k, v in t.items()}


def saex_cfg(d_model: int, d_sae: int) -> dict:
    """cfg.json beside the weights: saex's SAEConfig fields (saex/sae.py) for this run (d_sae = expansion × d_model)."""
    if d_sae % d_model:
        raise ValueError(f"d_sae {d_sae} is not a multiple of d_model {d_model}")
    return {"n_dimensions": d_model, "sparsity_coefficient": 7e-06, "batch_size": 1024, "expansion_factor": d_sae // d_model,
            "use_encoder_bias": True, "remove_decoder_bias": False, "encoder_init_method": "orthogonal",
            "decoder_init_method": "pseudoinverse", "decoder_bias_init_method": "zeros", "restrict_dec_norm": "exact",
            "sparsity_loss_type": "l1", "reconstruction_loss_type": "mse", "death_loss_type": "none",
            "use_model_parallel": True}


def saex_sae_file(directory, d_model: int = TINY["hidden_size"], d_sae: int = 49_152, *, seed: int = 0,
                  name: str = SAEX_NAME) -> pathlib.Path:
    """The bare file: <directory>/<name>.safetensors."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    save_file(saex_tensors(d_model, d_sae, seed=seed), str(path))
    return path


def saex_sae_hub(directory, d_model: int = TINY["hidden_size"], d_sae: int = 49_152, *, seed: int = 0,
                 name: str = SAEX_NAME) -> pathlib.Path:
    """saex's upload layout: <directory>/<name>/cfg.json + <name>/sae_weights.safetensors; returns <directory>/<name>."""
    folder = pathlib.Path(directory) / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(saex_tensors(d_model, d_sae, seed=seed), str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(saex_cfg(d_model, d_sae), indent=2))
    return folder


# ---------------------------------------------------------------------------------------------- SAELens gpt2-small-res-jb

GPT2_RES_JB_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"  # SAELens' release gpt2-small-res-jb (pretrained_saes.yaml)


def gpt2_res_jb_cfg(layer: int, d_in: int = 768, d_sae: int = 24_576) -> dict:
    """cfg.json of GPT2_RES_JB_REPO's blocks.<layer>.hook_resid_pre as the repository holds it: the mats_sae_training
    run's config (SAELens < 2.0 layout: hook_point, hook_point_layer, expansion_factor; no architecture,
    activation_fn_str, SAELens version, prepend_bos or model_from_pretrained_kwargs).

    Keys and values: SAELens' own test of this file (SAELens 5.x tests/unit/toolkit/test_pretrained_sae_loaders.py,
    test_get_sae_config_sae_lens, which reads it with device left as stored: "mps"), less the keys SAELens'
    handle_config_defaulting and the release's config_overrides add (activation_fn_str, apply_b_dec_to_input,
    architecture, dataset_trust_remote_code, finetuning_scaling_factor, model_from_pretrained_kwargs, neuronpedia_id,
    normalize_activations, prepend_bos, sae_lens_training_version); layer 0's run values, the layer and widths given."""
    if d_sae % d_in:
        raise ValueError(f"d_sae {d_sae} is not a multiple of d_in {d_in}")
    hook = f"blocks.{layer}.hook_resid_pre"
    return {
        "model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer, "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": 128,
        "use_cached_activations": False, "cached_activations_path": f"activations/Skylion007_openwebtext/gpt2-small/{hook}",
        "d_in": d_in, "n_batches_in_buffer": 128, "total_training_tokens": 300_000_000, "store_batch_size": 32,
        "device": "mps", "seed": 42, "dtype": "torch.float32", "b_dec_init_method": "geometric_median",
        "expansion_factor": d_sae // d_in, "from_pretrained_path": None, "l1_coefficient": 8e-05, "lr": 0.0004,
        "lr_scheduler_name": None, "lr_warm_up_steps": 5000, "train_batch_size": 4096, "use_ghost_grads": False,
        "feature_sampling_window": 1000, "feature_sampling_method": None, "resample_batches": 1028,
        "feature_reinit_scale": 0.2, "dead_feature_window": 5000, "dead_feature_estimation_method": "no_fire",
        "dead_feature_threshold": 1e-08, "log_to_wandb": True, "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None, "wandb_log_frequency": 100, "n_checkpoints": 10, "checkpoint_path": "checkpoints/y1t51byy",
        "d_sae": d_sae, "tokens_per_buffer": 67_108_864,
        "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def gpt2_res_jb_folder(directory, layer: int, tensors: dict[str, np.ndarray], *,
                       log_sparsity: np.ndarray | None = None) -> pathlib.Path:
    """<directory>/blocks.<layer>.hook_resid_pre/ as GPT2_RES_JB_REPO holds it: cfg.json (gpt2_res_jb_cfg),
    sae_weights.safetensors (float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]: the state
    dict SAELens' StandardSAE loads and compares with this file in its tests) and sparsity.safetensors ("sparsity":
    log10 feature density [d_sae], all below 0, which SAELens' loader reads beside them). Returns the folder."""
    d_in, d_sae = np.shape(tensors["W_enc"])
    folder = pathlib.Path(directory) / f"blocks.{layer}.hook_resid_pre"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(gpt2_res_jb_cfg(layer, d_in, d_sae)))
    save_file({k: np.ascontiguousarray(tensors[k], np.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
              str(folder / "sae_weights.safetensors"))
    sparsity = np.full(d_sae, -3.0) if log_sparsity is None else log_sparsity
    save_file({"sparsity": np.ascontiguousarray(sparsity, np.float32)}, str(folder / "sparsity.safetensors"))
    return folder


# ---------------------------------------------------------------------------------------------- MMLU

SUBJECTS = ("abstract_algebra", "anatomy", "astronomy")


def hendrycks_rows(subject: str, n: int, *, seed: int = 0) -> list[list[str]]:
    """n rows [question, A, B, C, D, answer letter] (Hendrycks' data/<split>/<subject>_<split>.csv: no header row)."""
    rng = np.random.default_rng([seed, sum(map(ord, subject))])
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(CORPUS.split(), size=int(rng.integers(4, 12))))
        rows.append([f"{subject.replace('_', ' ')} question {i}: {words}?",
                     *(f"option {c} of {i}, \"{w}\"" for c, w in zip("abcd", rng.choice(CORPUS.split(), 4))),
                     "ABCD"[int(rng.integers(0, 4))]])
    return rows


def hendrycks_val(root, *, subjects=SUBJECTS, n_per_subject: int = 6, seed: int = 0) -> pathlib.Path:
    """<root>/data/val/<subject>_val.csv for each subject (csv module quoting, "\\n" line ends); returns data/val."""
    folder = pathlib.Path(root) / "data" / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for s in subjects:
        with open(folder / f"{s}_val.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows(hendrycks_rows(s, n_per_subject, seed=seed))
    return folder


# ---------------------------------------------------------------------------------------------- all at once


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserFiles:
    """Every stand-in of a Phi-3 user's inputs, written under one root (see the module docstring)."""

    hf_folder: pathlib.Path      # --model <folder>
    hub_cache: pathlib.Path      # HF_HUB_CACHE=<hub_cache>, --model <repo_id>
    repo_id: str
    gguf: pathlib.Path           # --model <file>.gguf
    sae_file: pathlib.Path       # --sae <name>.safetensors
    sae_hub: pathlib.Path        # --sae <name>/ (cfg.json + sae_weights.safetensors)
    data_val: pathlib.Path       # --dataset hendrycks:<data/val>


def user_files(root, *, d_sae: int = 49_152, n_per_subject: int = 6, seed: int = 0,
               repo_id: str = "microsoft/Phi-3-mini-4k-instruct") -> UserFiles:
    """Write all stand-ins under `root` (about 40 MB with the 49,152-wide SAE; a few seconds)."""
    root = pathlib.Path(root)
    d_model = TINY["hidden_size"]
    return UserFiles(
        hf_folder=phi3_hf_folder(root / "Phi-3-mini-4k-instruct", seed=seed),
        hub_cache=phi3_hub_cache(root / "hub", repo_id=repo_id, seed=seed), repo_id=repo_id,
        gguf=phi3_gguf(root / "phi-3-mini-4k-instruct.fp16.gguf", seed=seed),
        sae_file=saex_sae_file(root / "saex-file", d_model, d_sae, seed=seed),
        sae_hub=saex_sae_hub(root / "nev--phi-3-4k-saex-test", d_model, d_sae, seed=seed),
        data_val=hendrycks_val(root / "mmlu", n_per_subject=n_per_subject, seed=seed),
    )
