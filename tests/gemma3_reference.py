"""transformers' float32 reference for the real Gemma 3 270M GGUF: token ids, logits and hidden_states of fixed texts.

transformers reads the same GGUF (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`): its own dequantization
(equal to the harness's, tested in test_gguf_reader), norms stored by llama.cpp as 1 + w turned back into w, the
sliding/global layer pattern and the local RoPE base (10,000) from Gemma3TextConfig's defaults (the file does not
store them). Used by tests/test_gemma3_real.py; `python tests/gemma3_reference.py OUT.npz` saves the arrays.

hidden_states[L] is the residual entering block L (hidden_states[0]: the embedding times sqrt(d_model)); the last
entry, hidden_states[n_layers], is after the final norm, not a residual.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import numpy as np

# Short texts: every position's logits are kept. The long one (over the 512-token sliding window) checks the local
# layers' window; only its last LONG_LOGITS positions' logits are kept (262,144 floats a position).
TEXTS = (
    "The capital of France is",
    "<start_of_turn>user\nWhat is 12+30?<end_of_turn>\n<start_of_turn>model\n",
    "def square(x):\n    return x ** 2  # 3.14159\n\n\tindented   spaces",
    "Unicode: café, naïve, 日本語, Ελληνικά, emoji 🙂👍🏽 and digits 1234567890.",
)
LONG_TEXT = " ".join(f"Item {i}: the quick brown fox jumps over the lazy dog number {i * 7 % 13}." for i in range(45))
LONG_LOGITS = 4


@dataclasses.dataclass(frozen=True)
class Reference:
    """One text through transformers (batch of one, BOS prepended as the file's add_bos_token says)."""

    text: str
    tokens: np.ndarray  # int64 [seq]
    logits: np.ndarray  # float32 [k, vocab]: the last k positions (k = seq for the short texts)
    hidden_states: np.ndarray  # float32 [n_layers + 1, seq, d_model]


def load(path: str | pathlib.Path, *, dtype: str = "float32"):
    """(transformers model, tokenizer) from the GGUF at `path`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pathlib.Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def run(model, tokens: np.ndarray, *, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [k, vocab] of the last `last` positions (all when None), hidden_states [n_layers + 1, seq, d]) as float32."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor(np.asarray(tokens)[None], dtype=torch.long), output_hidden_states=True,
                    logits_to_keep=0 if last is None else last)
    hidden = np.stack([h[0].float().numpy() for h in out.hidden_states])
    return out.logits[0].float().numpy(), hidden


def references(path: str | pathlib.Path, texts=TEXTS, long_text: str | None = LONG_TEXT, *, dtype: str = "float32",
               model_and_tokenizer=None) -> list[Reference]:
    """transformers' logits and hidden_states for `texts` (all positions) and `long_text` (last LONG_LOGITS logits)."""
    model, tokenizer = model_and_tokenizer or load(path, dtype=dtype)
    out = []
    for text, last in [(t, None) for t in texts] + ([(long_text, LONG_LOGITS)] if long_text else []):
        tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
        logits, hidden = run(model, tokens, last=last)
        out.append(Reference(text=text, tokens=tokens, logits=logits, hidden_states=hidden))
    return out


def save(refs: list[Reference], out: str | pathlib.Path) -> None:
    arrays = {}
    for i, r in enumerate(refs):
        arrays |= {f"{i}/text": np.array(r.text), f"{i}/tokens": r.tokens, f"{i}/logits": r.logits,
                   f"{i}/hidden_states": r.hidden_states}
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    from harness.model.sources import locate_checkpoint

    target = sys.argv[1] if len(sys.argv) > 1 else "gemma3_reference.npz"
    save(references(locate_checkpoint("gemma3-270m")), target)
    print(target)
