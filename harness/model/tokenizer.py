"""A `tokenizers.Tokenizer` bundled with the checkpoint's chat template and special tokens.

Readers build one from their files (GGUF vocab + merges, or tokenizer.json); prompts use
`render_chat` so that every model gets its own template, rendered as Hugging Face renders it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
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
        """The chat template applied to `messages`, as text (tokenize it with `encode`).

        Same variables as transformers' apply_chat_template: tools/documents None, special tokens only when set.
        """
        if not self.chat_template:
            raise InputError(f"{self.source}: the checkpoint has no chat template")
        special = {name: value for name, value in (("bos_token", self.bos_token), ("eos_token", self.eos_token))
                   if value is not None}
        return _compiled_template(self.chat_template).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special)


# The chat-template environment of transformers (utils/chat_template_utils.py, _cached_compile_jinja_template in
# 5.x), rebuilt here because transformers is only an optional reference dependency; tests/test_chat_template_parity.py
# renders the same conversations through both.


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """json.dumps, not jinja's tojson: no HTML escaping, non-ASCII kept, as transformers' filter."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` only, not the dict type itself (as transformers)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace() refusing underscore-prefixed attributes (as transformers)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` renders its body, as transformers' AssistantTracker does when not tracking."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def chat_environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    """The jinja2 environment transformers compiles chat templates in: sandboxed, trim/lstrip blocks, loopcontrols,
    {% generation %}, tojson(ensure_ascii=False), raise_exception, strftime_now, restricted dict and namespace."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str) -> jinja2.Template:
    """Compile a chat template once per distinct string (templates are re-rendered for every question)."""
    return chat_environment().from_string(template)
