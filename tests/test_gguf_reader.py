"""Tests for harness.model.gguf_reader: tiny GGUFs written here with gguf.GGUFWriter, and the real SmolLM2 file.

Each tiny file is built from known canonical (HF-layout) weights, so the reader must give them back:
exactly for F32, within one quantization step otherwise, and equal to gguf's own dequantization.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np
import pytest

from harness.errors import InputError
from harness.model.config import ModelConfig
from harness.model.families.common import unpermute_rope_rows
from harness.model.gguf_reader import dequantized, read_gguf
from harness.model.sources import default_gguf_path

Q = gguf.GGMLQuantizationType
SHAPE = dict(d_model=64, n_heads=4, n_kv_heads=2, d_ffn=96)  # rows are multiples of the 32-wide quant blocks


# --- the tiny GGUF writer -----------------------------------------------------------------------


def gpt2_byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (the alphabet of byte-level BPE vocabularies)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]


def byte_level_vocab() -> dict:
    """A tiny byte-level BPE tokenizer: 256 bytes, a few merges, two control tokens."""
    merges = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or"]
    tokens = gpt2_byte_alphabet() + ["he", "ll", "hell", "Ġw", "or", "Ġwor", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 2,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    }


SPM_PIECES = {  # piece → score; higher scores merge first (SentencePiece BPE)
    "▁": -1.0, "h": -2.0, "e": -3.0, "l": -4.0, "o": -5.0, "w": -6.0, "r": -7.0, "d": -8.0,
    "▁h": -9.0, "ll": -10.0, "he": -11.0, "▁he": -12.0, "llo": -13.0, "▁hello": -14.0, "▁w": -15.0,
    "or": -16.0, "▁wor": -17.0, "▁world": -18.0, "ld": -19.0,
}


def sentencepiece_vocab() -> dict:
    """A tiny SentencePiece-BPE vocabulary (no merges: they come from the scores) with byte fallback."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPM_PIECES) + ["<|user|>", "<|end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [3, 4]
    scores = [0.0] * 259 + list(SPM_PIECES.values()) + [0.0, 0.0]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py `LlamaModel.permute`: HF rotate-half rows → llama.cpp interleaved rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_value(writer: gguf.GGUFWriter, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def write_tiny_gguf(
    path: pathlib.Path,
    *,
    arch: str = "llama",
    n_layers: int = 2,
    qtype: Q = Q.F32,
    tied: bool = False,
    tokenizer: dict | None = None,
    drop_keys: tuple[str, ...] = (),
    extra_keys: dict | None = None,
    replace_tensors: dict | None = None,
    extra_tensors: dict | None = None,
    seed: int = 0,
) -> dict:
    """Write a tiny random `arch` GGUF; return the canonical weights and, per GGUF tensor, (floats, stored, type).

    2-D tensors are stored as `qtype` (quantized with gguf.quants.quantize), norms as F32.
    `replace_tensors` maps a GGUF name to (raw array, raw type) written instead, for error cases;
    `extra_tensors` maps further GGUF names to F32 arrays written as well.
    """
    tokenizer = byte_level_vocab() if tokenizer is None else tokenizer
    vocab = len(tokenizer["tokenizer.ggml.tokens"])
    config = ModelConfig(
        architecture=arch if arch in ("llama", "phi3") else "llama", n_layers=n_layers, head_dim=16,
        vocab_size=vocab, rope_base=10000.0, norm_eps=float(np.float32(1e-5)),  # stored as float32
        tie_embeddings=tied, max_context=128, **SHAPE,
    )
    rng = np.random.default_rng(seed)
    canonical = {k: rng.uniform(-1, 1, size=s).astype(np.float32) for k, s in config.expected_shapes().items()}

    tensors = {"token_embd.weight": canonical["model.embed_tokens.weight"], "output_norm.weight": canonical["model.norm.weight"]}
    if not tied:
        tensors["output.weight"] = canonical["lm_head.weight"]
    for i in range(n_layers):
        c = lambda name: canonical[f"model.layers.{i}.{name}"]  # noqa: E731
        b = f"blk.{i}."
        tensors |= {
            b + "attn_norm.weight": c("input_layernorm.weight"),
            b + "ffn_norm.weight": c("post_attention_layernorm.weight"),
            b + "attn_output.weight": c("self_attn.o_proj.weight"),
            b + "ffn_down.weight": c("mlp.down_proj.weight"),
        }
        if arch == "phi3":
            tensors[b + "attn_qkv.weight"] = np.concatenate(
                [c("self_attn.q_proj.weight"), c("self_attn.k_proj.weight"), c("self_attn.v_proj.weight")]
            )
            tensors[b + "ffn_up.weight"] = np.concatenate([c("mlp.gate_proj.weight"), c("mlp.up_proj.weight")])
        else:
            tensors[b + "attn_q.weight"] = llamacpp_permute(c("self_attn.q_proj.weight"), config.n_heads)
            tensors[b + "attn_k.weight"] = llamacpp_permute(c("self_attn.k_proj.weight"), config.n_kv_heads)
            tensors[b + "attn_v.weight"] = c("self_attn.v_proj.weight")
            tensors[b + "ffn_gate.weight"] = c("mlp.gate_proj.weight")
            tensors[b + "ffn_up.weight"] = c("mlp.up_proj.weight")

    keys = {
        f"{arch}.block_count": n_layers,
        f"{arch}.context_length": 128,
        f"{arch}.embedding_length": SHAPE["d_model"],
        f"{arch}.feed_forward_length": SHAPE["d_ffn"],
        f"{arch}.attention.head_count": SHAPE["n_heads"],
        f"{arch}.attention.head_count_kv": SHAPE["n_kv_heads"],
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.rope.dimension_count": 16,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        **tokenizer,
        **(extra_keys or {}),
    }
    writer = gguf.GGUFWriter(path, arch)
    for key, value in keys.items():
        if key not in drop_keys:
            _add_value(writer, key, value)
    stored = {}
    for name, floats in tensors.items():
        if replace_tensors and name in replace_tensors:
            raw, raw_type = replace_tensors[name]
            writer.add_tensor(name, raw, raw_dtype=raw_type)
            continue
        kind = qtype if floats.ndim == 2 else Q.F32
        data = floats if kind == Q.F32 else gguf.quants.quantize(floats, kind)
        writer.add_tensor(name, data, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
        stored[name] = (floats, data, kind)
    for name, floats in (extra_tensors or {}).items():
        writer.add_tensor(name, floats)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"config": config, "canonical": canonical, "stored": stored}


# --- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "phi3"])
@pytest.mark.parametrize("tied", [False, True])
def test_f32_tiny_file_gives_back_the_canonical_weights_exactly(tmp_path, arch, tied):
    written = write_tiny_gguf(tmp_path / "tiny.gguf", arch=arch, tied=tied)
    checkpoint = read_gguf(tmp_path / "tiny.gguf")

    assert checkpoint.config == written["config"]
    assert set(checkpoint.weights) == set(written["canonical"])
    for name, expected in written["canonical"].items():
        np.testing.assert_array_equal(checkpoint.weights[name], expected, err_msg=name)


def test_llama_q_and_k_rows_are_unpermuted_but_phi3_rows_are_not(tmp_path):
    """The file holds permute(W) for llama; reading must undo it (W != permute(W) for these shapes)."""
    written = write_tiny_gguf(tmp_path / "tiny.gguf", arch="llama")
    q_file = written["stored"]["blk.0.attn_q.weight"][0]
    q_read = read_gguf(tmp_path / "tiny.gguf").weights["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(q_file, q_read)
    np.testing.assert_array_equal(llamacpp_permute(q_read, SHAPE["n_heads"]), q_file)


@pytest.mark.parametrize("n_heads,head_dim", [(1, 2), (4, 16), (3, 8)])
def test_unpermute_inverts_llamacpp_permute(n_heads, head_dim):
    w = np.arange(n_heads * head_dim * 5, dtype=np.float32).reshape(n_heads * head_dim, 5)
    np.testing.assert_array_equal(unpermute_rope_rows(llamacpp_permute(w, n_heads), n_heads), w)


def _block_step(floats: np.ndarray, qtype: Q) -> np.ndarray:
    """One quantization step per 32-wide block, broadcast back to `floats`' shape."""
    blocks = floats.reshape(*floats.shape[:-1], -1, 32)
    top, low = blocks.max(-1, keepdims=True), blocks.min(-1, keepdims=True)
    absmax = np.abs(blocks).max(-1, keepdims=True)
    step = {
        Q.F16: absmax * 2.0**-10,
        Q.BF16: absmax * 2.0**-7,
        Q.Q8_0: absmax / 127,
        Q.Q4_0: absmax / 8,
        Q.Q5_0: absmax / 16,
        Q.Q4_1: (top - low) / 15,
        Q.Q5_1: (top - low) / 31,
    }[qtype]
    return np.broadcast_to(step, blocks.shape).reshape(floats.shape)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_quantized_tensors_match_gguf_dequantize_and_the_original_floats(tmp_path, qtype):
    written = write_tiny_gguf(tmp_path / "tiny.gguf", arch="llama", n_layers=1, qtype=qtype)
    weights = read_gguf(tmp_path / "tiny.gguf").weights
    checked = 0
    for gguf_name, canonical_name in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
    ]:
        floats, data, kind = written["stored"][gguf_name]
        assert kind == qtype
        reference = gguf.quants.dequantize(data, kind).reshape(floats.shape)
        np.testing.assert_array_equal(weights[canonical_name], reference, err_msg=gguf_name)
        checked += 1
    assert checked == 5
    # Every weight, permuted ones included, sits within one quantization step of what was written
    # (Q4_0 clips its top level, so a full step is reachable; 1% more covers the float16 block scale).
    for name, original in written["canonical"].items():
        error = np.abs(weights[name] - original)
        bound = 1.01 * _block_step(original, qtype) if original.ndim == 2 else 0.0
        assert np.all(error <= bound + 1e-7), f"{name}: max error {error.max()} over the quant step"


# --- K-quants: gguf cannot quantize them, so blocks are built from the layout and checked against ggml's C code ---

K_QUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
QK_K = 256
# byte layout of one 256-element block (ggml-common.h block_q*_K): (field, bytes), in order
K_LAYOUT = {
    Q.Q2_K: [("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)],
    Q.Q3_K: [("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)],
    Q.Q4_K: [("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)],
    Q.Q5_K: [("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)],
    Q.Q6_K: [("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)],
}


def _k_fields(block: bytes, qtype: Q) -> dict:
    fields, at = {}, 0
    for name, size in K_LAYOUT[qtype]:
        raw = block[at:at + size]
        fields[name] = float(np.frombuffer(raw, np.float16)[0]) if name in ("d", "dmin") else list(raw)
        at += size
    assert at == gguf.GGML_QUANT_SIZES[qtype][1]
    return fields


def _scale_min_k4(j: int, s: list[int]) -> tuple[int, int]:
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j packed in 12 bytes (Q4_K, Q5_K)."""
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def ggml_dequantize_k_block(block: bytes, qtype: Q) -> np.ndarray:
    """One K-quant block as ggml-quants.c's dequantize_row_q*_K computes it, one element at a time (float64)."""
    f = _k_fields(block, qtype)
    out = np.empty(QK_K)
    for e in range(QK_K):
        if qtype in (Q.Q2_K, Q.Q3_K):  # two halves of 128: 4 shifts x 2 runs of 16 weights over 32 bytes of qs
            half, j, r = e // 128, (e % 128) // 32, e % 32
            q = (f["qs"][half * 32 + r] >> (2 * j)) & 3
            sub = half * 8 + j * 2 + r // 16  # 16 sub-blocks of 16
            if qtype == Q.Q2_K:
                sc = f["scales"][sub]
                out[e] = f["d"] * (sc & 0xF) * q - f["dmin"] * (sc >> 4)
            else:  # 6-bit scales: low 4 bits in bytes 0-7 (nibbles), high 2 bits in bytes 8-11; high bit of q in hmask
                s = f["scales"]
                scale = ((s[sub % 8] >> (4 * (sub // 8))) & 0xF) | (((s[8 + sub % 4] >> (2 * (sub // 4))) & 3) << 4)
                high = (f["hmask"][r] >> (half * 4 + j)) & 1
                out[e] = f["d"] * (scale - 32) * (q - (0 if high else 4))
        elif qtype in (Q.Q4_K, Q.Q5_K):  # 8 sub-blocks of 32; two sub-blocks share 32 bytes (low, high nibble)
            sub, l = e // 32, e % 32
            q = (f["qs"][(sub // 2) * 32 + l] >> (4 * (sub % 2))) & 0xF
            if qtype == Q.Q5_K:
                q += 16 * ((f["qh"][l] >> sub) & 1)
            sc, m = _scale_min_k4(sub, f["scales"])
            out[e] = f["d"] * sc * q - f["dmin"] * m
        else:  # Q6_K: two halves of 128; 4 runs of 32 from 64 bytes of ql (nibbles) and 32 of qh (2 bits each)
            half, k, l = e // 128, (e % 128) // 32, e % 32
            low = (f["ql"][half * 64 + l + 32 * (k % 2)] >> (4 * (k // 2))) & 0xF
            high = (f["qh"][half * 32 + l] >> (2 * k)) & 3
            scale = np.int8(np.uint8(f["scales"][half * 8 + l // 16 + 2 * k]))
            out[e] = f["d"] * int(scale) * ((low | (high << 4)) - 32)
    return out


def random_k_blocks(qtype: Q, n_blocks: int, seed: int) -> np.ndarray:
    """`n_blocks` blocks of random bytes with finite float16 scales d (and dmin), as uint8 [n_blocks, type_size]."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, gguf.GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    at = 0
    for name, size in K_LAYOUT[qtype]:
        if name in ("d", "dmin"):
            scale = rng.uniform(1e-4, 0.05, size=n_blocks).astype(np.float16)
            blocks[:, at:at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        at += size
    return blocks


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_blocks_dequantize_as_ggml_does(tmp_path, qtype):
    """Random blocks (3 rows of 512 = 2 blocks each) through the reader's dequantization vs ggml's formulas."""
    rows, width = 3, 2 * QK_K
    blocks = random_k_blocks(qtype, rows * width // QK_K, seed=int(qtype))
    raw = blocks.reshape(rows, -1)
    ours = dequantized("t", qtype, (width, rows), raw, tmp_path / "x.gguf")
    assert ours.shape == (rows, width) and ours.dtype == np.float32
    expected = np.concatenate([ggml_dequantize_k_block(b.tobytes(), qtype) for b in blocks]).reshape(rows, width)
    np.testing.assert_array_equal(ours, expected.astype(np.float32))
    assert len(np.unique(ours)) > 50  # the random bytes reach many levels


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_tensor_read_from_a_gguf_file(tmp_path, qtype):
    """A K-quant tensor written by gguf.GGUFWriter, read back through the same mapped path read_weights uses."""
    from harness.validation import MappedTensor

    rows, width = 4, 3 * QK_K
    raw = random_k_blocks(qtype, rows * width // QK_K, seed=100 + int(qtype)).reshape(rows, -1)
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.ffn_down.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = gguf.GGUFReader(path).tensors[0]
    assert tensor.tensor_type == qtype and [int(d) for d in tensor.shape] == [width, rows]
    mapped = MappedTensor(path=path, dtype=tensor.data.dtype, shape=tuple(tensor.data.shape), offset=int(tensor.data_offset))
    ours = dequantized(tensor.name, qtype, tuple(int(d) for d in tensor.shape), mapped.read(), path)
    expected = np.stack([np.concatenate([ggml_dequantize_k_block(row[i:i + len(row) // 3].tobytes(), qtype)
                                         for i in range(0, len(row), len(row) // 3)]) for row in raw])
    np.testing.assert_array_equal(ours, expected.astype(np.float32))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q4_0])
def test_rows_must_hold_whole_blocks(tmp_path, qtype):
    """512 elements are two 256-blocks, but rows of 128 would split them (one InputError line)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = 512 // block_size
    raw = np.zeros((n_blocks, type_size), dtype=np.uint8)
    width = block_size // 2
    with pytest.raises(InputError) as caught:
        dequantized("blk.0.ffn_down.weight", qtype, (width, 512 // width), raw, tmp_path / "x.gguf")
    assert "not a multiple" in str(caught.value) and "\n" not in str(caught.value)


def test_short_k_quant_data_is_refused(tmp_path):
    raw = random_k_blocks(Q.Q4_K, 2, seed=0)[:, :-1]  # one byte short per block
    with pytest.raises(InputError) as caught:
        dequantized("blk.0.attn_output.weight", Q.Q4_K, (512,), raw, tmp_path / "x.gguf")
    assert "truncated or corrupt" in str(caught.value)


def test_dtype_is_applied(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=1)
    weights = read_gguf(tmp_path / "tiny.gguf", dtype=np.float16).weights
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float16)}


@pytest.mark.slow
@pytest.mark.reference
def test_llama_weights_equal_transformers_gguf_loading(tmp_path):
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    write_tiny_gguf(tmp_path / "tiny.gguf", arch="llama", n_layers=2)
    ours = read_gguf(tmp_path / "tiny.gguf").weights
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(ours) == set(theirs)
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)


# --- tokenizers -----------------------------------------------------------------------------------


def test_byte_level_tokenizer_merges_and_keeps_control_tokens_whole(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=1)
    tok = read_gguf(tmp_path / "tiny.gguf").tokenizer
    vocab = byte_level_vocab()["tokenizer.ggml.tokens"]
    pieces = lambda text: [vocab[i] for i in tok.encode(text)]  # noqa: E731
    assert pieces("hell world") == ["hell", "Ġwor", "l", "d"]
    assert pieces("<|im_start|>hell<|im_end|>") == ["<|im_start|>", "hell", "<|im_end|>"]
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>" and tok.add_bos is False
    text = "héllo\n wörld 12"
    assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_tokenizer_uses_scores_prefix_space_and_byte_fallback(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", arch="phi3", n_layers=1, tokenizer=sentencepiece_vocab())
    tok = read_gguf(tmp_path / "tiny.gguf").tokenizer
    vocab = sentencepiece_vocab()["tokenizer.ggml.tokens"]
    pieces = lambda text: [vocab[i] for i in tok.encode(text, add_bos=False)]  # noqa: E731
    assert pieces("hello world") == ["▁hello", "▁world"]
    assert pieces("hé") == ["▁h", "<0xC3>", "<0xA9>"]  # é is not in the vocabulary: its UTF-8 bytes
    assert pieces("<|user|>hello<|end|>") == ["<|user|>", "▁hello", "<|end|>"]
    assert tok.add_bos is True and tok.encode("hello")[0] == vocab.index("<s>")
    assert tok.decode(tok.encode("hello wé", add_bos=False)) == "hello wé"


def gemma_vocab() -> dict:
    """A tiny Gemma-style vocabulary: control and user-defined tokens first (as Gemma's), space runs stored with real
    spaces, no merges, and scores that do not follow the vocabulary order (the merges must come from the order)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "  ", "   "]
    special_types = [3, 3, 3, 3, 3, 3, 4, 4, 4, 4]
    pieces = ["▁", "a", "b", "h", "i", "u", "s", "e", "r", "▁b", "hi", "▁hi", "us", "er", "user", "a▁"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = special_types + [6] * 256 + [1] * len(pieces)
    # "a▁" and "▁b" overlap in "a b": "a▁" scores best, "▁b" comes first in the vocabulary
    scores = [-1000.0] * len(specials) + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    scores[tokens.index("▁b")], scores[tokens.index("a▁")] = 10.0, 11.0
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }


def _gemma_tokenizer(tmp_path, arch="gemma3"):
    from harness.model.gguf_reader import read_tokenizer

    path = tmp_path / "gemma.gguf"
    write_tiny_gguf(path, arch=arch, n_layers=1, tokenizer=gemma_vocab())
    return read_tokenizer(gguf.GGUFReader(path), path)


GEMMA_TEXTS = ["a  b", "a   b", "a b", "hi  hi", " hi", "hi ", "a    b", "▁▁b", "a \n\nb", "user\nhi",
               "<start_of_turn>user\nhi<end_of_turn>\n", "é", "<bos>hi"]


def test_gemma_tokenizer_respells_space_runs_and_merges_in_vocabulary_order(tmp_path):
    tok = _gemma_tokenizer(tmp_path)
    vocab = gemma_vocab()["tokenizer.ggml.tokens"]
    pieces = lambda text: [vocab[i] for i in tok.encode(text, add_bos=False)]  # noqa: E731
    # "  " (id 8) is reached by BPE as "▁▁", before "▁b" and "a▁" which score higher: merges follow the vocabulary order
    assert pieces("a  b") == ["a", "  ", "b"] and pieces("a   b") == ["a", "   ", "b"]
    assert pieces("a b") == ["a", "▁b"]  # "a▁" scores best but comes last
    assert pieces("a    b") == ["a", "  ", "  ", "b"]  # no 4-space token: BPE pairs, not the longest match
    assert pieces(" hi") == ["▁hi"] and pieces("hi") == ["hi"]  # no space prefix
    assert pieces("<start_of_turn>user\nhi<end_of_turn>\n") == ["<start_of_turn>", "user", "\n", "hi", "<end_of_turn>", "\n"]
    assert pieces("é") == ["<0xC3>", "<0xA9>"]
    assert tok.add_bos is True and tok.encode("hi") == [2, vocab.index("hi")]
    assert (tok.bos_token, tok.eos_token, tok.chat_template) == ("<bos>", "<eos>", None)
    for text in (" hi", "a  b", "  hi\n\n", "é hi"):
        assert tok.decode(tok.encode(text, add_bos=False)) == text  # nothing stripped: no prefix was added


def test_space_runs_stay_whole_tokens_outside_gemma(tmp_path):
    """Another SentencePiece architecture keeps llama.cpp's reading: user-defined tokens are matched whole, scores rank."""
    tok = _gemma_tokenizer(tmp_path, arch="llama")
    vocab = gemma_vocab()["tokenizer.ggml.tokens"]
    assert [vocab[i] for i in tok.encode("a    b", add_bos=False)] == ["a", "   ", "▁b"]
    assert [vocab[i] for i in tok.encode("a b", add_bos=False)] == ["a▁", "b"]


@pytest.mark.slow
@pytest.mark.reference
def test_gemma_tokenizer_equals_transformers_gguf_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    ours = _gemma_tokenizer(tmp_path)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="gemma.gguf")
    for text in GEMMA_TEXTS:  # (the harness never doubles a BOS the text starts with; transformers does)
        assert ours.encode(text, add_bos=False) == theirs.encode(text, add_special_tokens=False), text
        assert ours.encode(text) == theirs.encode(text)[text.startswith("<bos>"):], text
        assert ours.decode(ours.encode(text, add_bos=False)) == theirs.decode(theirs.encode(text, add_special_tokens=False))


TOKENIZER_TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; 3.14159 ≈ π.",
    "  leading spaces,   several   inner spaces and a trailing one ",
    "line one\nline two\n\n\tindented\r\nwindows",
    "Unicode: café, naïve, 日本語, Ελληνικά, emoji 🙂👍🏽",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n",
    "Answer: (A",
    "don't won't it's I'm we'll they've",
    "",
]


@pytest.mark.slow
@pytest.mark.reference
def test_sentencepiece_tokenizer_equals_transformers_gguf_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    write_tiny_gguf(tmp_path / "tiny.gguf", arch="phi3", n_layers=1, tokenizer=sentencepiece_vocab())
    ours = read_gguf(tmp_path / "tiny.gguf").tokenizer
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    texts = ["hello world", "hello  world", "wé hold", "<|user|>hello<|end|>", "hello\nworld", "über"]
    for text in texts:
        assert ours.encode(text, add_bos=False) == theirs.encode(text, add_special_tokens=False), text
    # phi3's chat tokens strip the whitespace after them (Phi-3's tokenizer.json rstrip, llama.cpp's RSTRIP attribute);
    # transformers' GGUF converter leaves it, so here the harness follows the model's own tokenizer, not that converter
    chat = ours.encode("<|user|>\nhello<|end|>\n", add_bos=False)
    assert chat == ours.encode("<|user|>hello<|end|>", add_bos=False) == theirs.encode("<|user|>hello<|end|>", add_special_tokens=False)


# --- the real SmolLM2 file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf(default_gguf_path())


@pytest.mark.slow
def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.architecture, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ffn) == ("llama", 30, 576, 9, 3, 1536)
    assert (c.head_dim, c.vocab_size, c.rope_base, c.tie_embeddings) == (64, 49152, 100000.0, True)
    assert c.max_context == 8192 and c.norm_eps == pytest.approx(1e-5)
    assert smollm2.tokenizer.vocab_size == 49152


@pytest.mark.slow
def test_smollm2_weights_are_finite_and_dequantized(smollm2):
    assert len(smollm2.weights) == 2 + 9 * 30
    for name, w in smollm2.weights.items():
        assert w.dtype == np.float32 and np.all(np.isfinite(w)), name
    # Dequantized Q4_1 and Q8_0 tensors are not all-zero or constant.
    assert np.std(smollm2.weights["model.embed_tokens.weight"]) > 0
    assert np.std(smollm2.weights["model.layers.0.self_attn.q_proj.weight"]) > 0


@pytest.mark.slow
def test_smollm2_chat_tokens_are_single_tokens(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n")
    assert ids[0] == tok.token_id("<|im_start|>") and tok.token_id("<|im_end|>") in ids
    assert tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n"


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("text", TOKENIZER_TEXTS)
def test_smollm2_tokenizer_equals_transformers(smollm2, smollm2_hf_tokenizer, text):
    assert smollm2.tokenizer.encode(text) == smollm2_hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Again"}],
    ],
)
def test_smollm2_chat_template_renders_as_transformers(smollm2, smollm2_hf_tokenizer, messages):
    ours = smollm2.tokenizer.render_chat(messages)
    theirs = smollm2_hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert ours.startswith("<|im_start|>system\n") and ours.endswith("<|im_start|>assistant\n")


# --- errors ---------------------------------------------------------------------------------------


def _error(path: pathlib.Path) -> str:
    with pytest.raises(InputError) as caught:
        read_gguf(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "no such GGUF file" in _error(tmp_path / "absent.gguf")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    assert "not a readable GGUF file" in _error(path)


@pytest.mark.parametrize("fraction", [0.5, 0.98])
def test_truncated_file(tmp_path, fraction):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    _error(path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch="bloom", n_layers=1)  # (gpt2, once the example here, is a family now)
    assert "general.architecture" in _error(path) and "bloom" in _error(path)


def test_unsupported_quant_type(tmp_path):
    path = tmp_path / "tiny.gguf"
    block_bytes = gguf.GGML_QUANT_SIZES[Q.IQ4_NL][1]
    raw = np.zeros((SHAPE["d_model"], SHAPE["d_ffn"] // 32 * block_bytes), dtype=np.uint8)
    write_tiny_gguf(path, n_layers=1, replace_tensors={"blk.0.ffn_down.weight": (raw, Q.IQ4_NL)})
    message = _error(path)
    assert "blk.0.ffn_down.weight" in message and "IQ4_NL" in message


@pytest.mark.parametrize(
    "key", ["llama.attention.layer_norm_rms_epsilon", "llama.block_count", "tokenizer.ggml.tokens", "llama.context_length"]
)
def test_missing_metadata_key(tmp_path, key):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1, drop_keys=(key,))
    assert key in _error(path)


def test_partial_rotary_is_refused(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch="phi3", n_layers=1, extra_keys={"phi3.rope.dimension_count": 8})
    assert "phi3.rope.dimension_count" in _error(path)


def test_fused_phi3_tensor_with_wrong_shape(tmp_path):
    path = tmp_path / "tiny.gguf"
    wrong = np.zeros((SHAPE["d_model"] * 3, SHAPE["d_model"]), dtype=np.float32)  # MHA-sized, config is GQA
    write_tiny_gguf(path, arch="phi3", n_layers=1, replace_tensors={"blk.0.attn_qkv.weight": (wrong, Q.F32)})
    assert "blk.0.attn_qkv.weight" in _error(path)


def test_tensor_with_wrong_shape(tmp_path):
    path = tmp_path / "tiny.gguf"
    wrong = np.zeros((SHAPE["d_model"], SHAPE["d_model"]), dtype=np.float32)  # ffn_down is [d_model, d_ffn]
    write_tiny_gguf(path, n_layers=1, replace_tensors={"blk.0.ffn_down.weight": (wrong, Q.F32)})
    assert "model.layers.0.mlp.down_proj.weight" in _error(path)


def test_tensor_beyond_block_count_is_not_dropped(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=2, extra_keys={"llama.block_count": 1})  # layer 1's tensors are extra
    assert "blk.1." in _error(path)


@pytest.mark.parametrize(
    "arch,extra,expected",
    [
        ("llama", "blk.0.attn_qkv.weight", "is not part of a llama model"),
        ("phi3", "blk.0.ffn_gate.weight", "is not part of a phi3 model"),
        ("phi3", "blk.0.attn_q.weight", "a second time"),
    ],
)
def test_foreign_or_doubled_tensor_is_refused(tmp_path, arch, extra, expected):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch=arch, n_layers=1, extra_tensors={extra: np.zeros((SHAPE["d_model"], SHAPE["d_model"]), np.float32)})
    message = _error(path)
    assert extra in message and expected in message


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("llama.attention.layer_norm_rms_epsilon", "1e-5", "llama.attention.layer_norm_rms_epsilon = '1e-5' (str)"),
        ("llama.attention.layer_norm_rms_epsilon", float("nan"), "llama.attention.layer_norm_rms_epsilon = nan"),
        ("llama.attention.layer_norm_rms_epsilon", -1.0, "llama.attention.layer_norm_rms_epsilon = -1.0"),
        ("tokenizer.ggml.eos_token_id", [1, 2], "tokenizer.ggml.eos_token_id = [1, 2] (list)"),
        ("tokenizer.ggml.bos_token_id", "1", "tokenizer.ggml.bos_token_id = '1' (str)"),
        ("tokenizer.ggml.bos_token_id", 100_000, "bos_token_id=100000 is outside the"),
        ("tokenizer.chat_template", 5, "tokenizer.chat_template = 5 (int)"),
        ("tokenizer.ggml.add_bos_token", "false", "tokenizer.ggml.add_bos_token = 'false' (str)"),
        ("llama.rope.scaling.type", "linear", "llama.rope.scaling.type='linear' changes the model's maths"),
    ],
)
def test_metadata_values_are_typed_and_ranged(tmp_path, key, value, fragment):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1, extra_keys={key: value})
    assert fragment in _error(path)


def test_harmless_unknown_keys_are_listed(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1, extra_keys={"llama.some_future_key": 3, "general.name": "tiny"})
    assert read_gguf(path).ignored_fields == ("llama.some_future_key",)
