"""A `tokenizers.Tokenizer` bundled with the checkpoint's chat template and special tokens.

Readers build one from their files (GGUF vocab + merges, or tokenizer.json); prompts use
`render_chat` so that every model gets its own template, rendered as Hugging Face renders it.
"""

from __future__ import annotations

import dataclasses
import functools

import jinja2
import jinja2.sandbox
import tokenizers

from harness.errors import InputError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatTokenizer:
    """Text ⇄ token ids, plus the chat template; `add_bos` says whether encode prepends BOS."""

    tokenizer: tokenizers.Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos: bool
    source: str = ""

    def __post_init__(self):
        """Types only (readers check ids against the vocabulary): a template or token that is not a str is refused."""
        for field in ("chat_template", "bos_token", "eos_token"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise InputError(f"{self.source}: {field} is {type(value).__name__} {value!r:.60}, expected a string")
        if not isinstance(self.add_bos, bool):
            raise InputError(f"{self.source}: add_bos is {self.add_bos!r:.60}, expected true or false")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """Id of one vocabulary entry; InputError if the vocabulary lacks it."""
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise InputError(f"{self.source}: token {token!r} is not in the vocabulary")
        return tid

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text` (special tokens in the text are parsed as such)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token is not None:
            bos = self.token_id(self.bos_token)
            if not ids or ids[0] != bos:
                ids = [bos, *ids]
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages`, as text (tokenize it with `encode`)."""
        if not self.chat_template:
            raise InputError(f"{self.source}: the checkpoint has no chat template")
        return _compiled_template(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str) -> jinja2.Template:
    """Compile a chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)
