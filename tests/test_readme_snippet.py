"""The README's snippet, run as written: load the default model, print the top-5 next tokens for a chat
question, then greedy-decode a few tokens and check the answer names Paris (BRIEF §3: "The capital of France is Paris.")."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
# The README's first python block, read from the README itself so the two cannot drift apart.
README_SNIPPET = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_snippet_prints_top_tokens_and_greedy_answer_names_paris(capsys):
    namespace: dict = {}
    exec(compile(README_SNIPPET, "README.md snippet", "exec"), namespace)
    printed = capsys.readouterr().out
    top5 = namespace["top5"]
    tok, model, checkpoint, tokens = (namespace[k] for k in ("tok", "model", "checkpoint", "tokens"))
    assert len(set(top5.tolist())) == 5 and repr(tok.decode([int(top5[0])])) in printed

    # Greedy decoding: a fixed width (right padding is never attended to by earlier positions) so the
    # forward compiles once; the next token is read at the last real position.
    from harness.model import capture

    steps, n = 7, tokens.shape[1]
    buffer = np.full((1, n + steps), tok.token_id(tok.eos_token), dtype=np.int64)
    buffer[0, :n] = tokens[0]
    for step in range(steps):
        logits = capture.logits(model, buffer, max_context=checkpoint.config.max_context)
        buffer[0, n + step] = int(np.argmax(np.asarray(logits[0, n + step - 1])))
    answer = tok.decode(buffer[0, n:].tolist())
    print(f"top-5 next tokens: {printed.strip()}; greedy answer: {answer!r}")
    assert int(top5[0]) == buffer[0, n]  # the snippet's top token is the first greedy token
    assert "Paris" in answer, f"greedy answer {answer!r} does not name Paris"
