"""Chat templates render exactly as transformers renders them: the same conversations through ChatTokenizer.render_chat
and through transformers' own renderer (render_jinja_template, what apply_chat_template calls), for the templates of
SmolLM2, Phi-3-mini and Llama-3, and small templates that use loopcontrols, tojson, {% generation %} and the globals."""

from __future__ import annotations

import jinja2
import pytest
import tokenizers
from tokenizers import models

import standins
from harness.model.sources import read_checkpoint
from harness.model.tokenizer import ChatTokenizer

transformers_chat = pytest.importorskip("transformers.utils.chat_template_utils")

pytestmark = pytest.mark.reference

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json "chat_template" (revision with add_generation_prompt),
# verbatim; bos <|begin_of_text|>, eos <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Skips system turns with {% continue %}, stops after the first assistant turn with {% break %}, and writes each
# content with tojson (non-ASCII kept and <, >, & not HTML-escaped in transformers' filter; jinja's own differs on both).
LOOPCONTROLS_TEMPLATE = """{% for m in messages %}
{% if m.role == 'system' %}{% continue %}{% endif %}
{{ m.role }}: {{ m.content | tojson }}
{% if m.role == 'assistant' %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}assistant:{% endif %}"""

# The other names transformers' environment defines: {% generation %}, namespace, dict, raise_exception, and special
# tokens passed only when the tokenizer has them (`bos_token is defined`).
GLOBALS_TEMPLATE = """{% set ns = namespace(n=0) %}
{% for m in messages %}
{% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}
{% set ns.n = ns.n + 1 %}
{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}
{{ dict(role=m.role, k=ns.n) | tojson(indent=1) }}
{% endfor %}
{{ bos_token if bos_token is defined else '[no bos]' }}|{{ eos_token is defined }}|{{ strftime_now('%Y') | length }}"""

NON_ASCII = "Ünïcödé — 日本語 «ça» <b>&amp;</b> \"q\""
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system-user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi\nthere  "}],
    "system-user-assistant": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "A"}, {"role": "user", "content": "Again"}],
    "non-ascii": [{"role": "system", "content": NON_ASCII}, {"role": "user", "content": NON_ASCII},
                  {"role": "assistant", "content": NON_ASCII}],
}


def _tokenizer(template: str, *, bos: str | None, eos: str | None) -> ChatTokenizer:
    vocab = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return ChatTokenizer(tokenizer=vocab, chat_template=template, bos_token=bos, eos_token=eos, add_bos=False,
                         source="parity")


@pytest.fixture(scope="module")
def templates() -> dict[str, ChatTokenizer]:
    phi3 = standins.phi3_tokenizer_config()
    smollm2 = read_checkpoint(None).tokenizer
    assert "<|im_start|>" in smollm2.chat_template  # the GGUF's own template, not a stand-in
    return {
        "smollm2": smollm2,
        "phi3": _tokenizer(phi3["chat_template"], bos=phi3["bos_token"], eos=phi3["eos_token"]),
        "llama3": _tokenizer(LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>"),
        "loopcontrols": _tokenizer(LOOPCONTROLS_TEMPLATE, bos="<s>", eos="</s>"),
        "globals": _tokenizer(GLOBALS_TEMPLATE, bos="<s>", eos="</s>"),
        "globals-no-bos": _tokenizer(GLOBALS_TEMPLATE, bos=None, eos="</s>"),
    }


def _transformers_render(tok: ChatTokenizer, messages, *, add_generation_prompt: bool) -> str:
    """transformers' renderer with the special tokens apply_chat_template passes (special_tokens_map: set ones only)."""
    special = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token)) if v is not None}
    rendered, _ = transformers_chat.render_jinja_template(
        conversations=[messages], chat_template=tok.chat_template, add_generation_prompt=add_generation_prompt, **special)
    return rendered[0]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", ["smollm2", "phi3", "llama3", "loopcontrols", "globals", "globals-no-bos"])
def test_render_chat_equals_transformers(templates, family, conversation, add_generation_prompt):
    tok, messages = templates[family], CONVERSATIONS[conversation]
    ours = tok.render_chat(messages, add_generation_prompt=add_generation_prompt)
    assert ours == _transformers_render(tok, messages, add_generation_prompt=add_generation_prompt)
    if conversation == "non-ascii" and family != "loopcontrols":
        assert NON_ASCII in ours  # a non-ASCII round trip, not two equal empty strings


def test_the_features_the_parity_relies_on_are_exercised(templates):
    """Guards the fixtures themselves: the loopcontrols template really breaks, continues and keeps non-ASCII in tojson."""
    messages = CONVERSATIONS["non-ascii"] + [{"role": "user", "content": "after the break"}]
    out = templates["loopcontrols"].render_chat(messages, add_generation_prompt=False)
    assert out.count(": ") == 2 and "system" not in out and "after the break" not in out  # continue, break
    assert '"Ünïcödé — 日本語 «ça» <b>&amp;</b> \\"q\\""' in out  # ensure_ascii=False, no HTML escaping
    globals_out = templates["globals-no-bos"].render_chat(CONVERSATIONS["user"], add_generation_prompt=False)
    assert globals_out.endswith("[no bos]|True|4")


def test_raise_exception_raises_the_same_error(templates):
    tok, messages = templates["globals"], [{"role": "tool", "content": "x"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool") as ours:
        tok.render_chat(messages)
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool") as theirs:
        _transformers_render(tok, messages, add_generation_prompt=True)
    assert str(ours.value) == str(theirs.value)


# google/gemma-2-2b-it tokenizer_config.json "chat_template" (Gemma's <start_of_turn> turns, "model" for the
# assistant, no system role); bos <bos>, eos <eos>.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", [
    CONVERSATIONS["user"], CONVERSATIONS["system-user-assistant"][1:], CONVERSATIONS["non-ascii"][1:]])
def test_gemma_chat_template_renders_as_transformers(messages, add_generation_prompt):
    tok = _tokenizer(GEMMA_TEMPLATE, bos="<bos>", eos="<eos>")
    ours = tok.render_chat(messages, add_generation_prompt=add_generation_prompt)
    assert ours == _transformers_render(tok, messages, add_generation_prompt=add_generation_prompt)
    assert ours.startswith("<bos><start_of_turn>user\n") and ("<start_of_turn>model\n" in ours) == (
        add_generation_prompt or len(messages) > 1)


def test_gemma_chat_template_refuses_a_system_turn_as_transformers_does():
    tok = _tokenizer(GEMMA_TEMPLATE, bos="<bos>", eos="<eos>")
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        tok.render_chat(CONVERSATIONS["system-user"])
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        _transformers_render(tok, CONVERSATIONS["system-user"], add_generation_prompt=True)
