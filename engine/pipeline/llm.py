"""LLM labeller: one label per head by in-context learning over an OpenAI-compatible chat API.

The prompt shows five hand-labelled example heads (engine/data/banks/llm_examples.json), then the
head's TextSpan texts, and asks for one label from the bank's vocabulary. Free answers are mapped
onto the vocabulary through synonyms (`engine.core.labels.map_answer`), else kept as new labels.

Responses are cached by the caller (the store's `llm_cache` table): `LLMLabeller` takes the
cached responses as a dict and collects the new ones in `new_entries`. The API key is read from
`OPENAI_API_KEY` when the first uncached request is made; it is never stored, logged or shown
(error messages are built from status codes, and any server text is redacted).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.core.labels import map_answer
from engine.errors import UserError

DEFAULT_MODEL = "gpt-4o-mini"
SYSTEM = (
    "You label attention heads of a CLIP image encoder. Each head is described by the text "
    "descriptions that best explain its output over many images, best first. Answer with the "
    "single property the descriptions have in common, as one word or short phrase taken from "
    "this vocabulary when one fits: {vocabulary}. Answer with the label only."
)


def build_messages(
    texts: Sequence[str],
    vocabulary: Sequence[str],
    examples: Sequence[tuple[list[str], str]],
    system: str = SYSTEM,
) -> list[dict[str, str]]:
    """Chat messages: system instruction (`system`, with a `{vocabulary}` slot; heads' by
    default), the examples as user/assistant turns, then the unit's texts."""

    def ask(ts: Sequence[str]) -> str:
        return "Descriptions:\n" + "\n".join(f"- {t}" for t in ts) + "\nProperty:"

    msgs = [{"role": "system", "content": system.format(vocabulary=", ".join(vocabulary))}]
    for ex_texts, ex_label in examples:
        msgs.append({"role": "user", "content": ask(ex_texts)})
        msgs.append({"role": "assistant", "content": ex_label})
    msgs.append({"role": "user", "content": ask(texts)})
    return msgs


def prompt_hash(messages: Sequence[Mapping[str, str]], model: str) -> str:
    """The cache key: sha256 of the model name and the exact messages."""
    blob = json.dumps({"model": model, "messages": list(messages)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _redact(text: str, secret: str | None) -> str:
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return text.splitlines()[0][:200] if text else ""


def make_client(base_url: str | None, timeout: float, max_retries: int):
    """(OpenAI client, where): the one place the key and the endpoint are resolved
    (`OPENAI_API_KEY`, then `base_url` or `OPENAI_BASE_URL`); a missing key is a UserError.
    `where` names the endpoint in messages."""
    import openai

    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise UserError(
            "the LLM labeller needs OPENAI_API_KEY in the environment (and OPENAI_BASE_URL for "
            "a server other than OpenAI's)"
        )
    base = base_url or os.environ.get("OPENAI_BASE_URL") or None
    client = openai.OpenAI(api_key=key, base_url=base, timeout=timeout, max_retries=max_retries)
    return client, base or "the OpenAI API"


def api_error(e: Exception, where: str, key: str | None, *, timeout: float, max_retries: int,
              model: str = "") -> UserError:  # fmt: skip
    """One line for an error of the OpenAI client (the key redacted from any server text)."""
    import openai

    retries = f" ({max_retries} retries)" if max_retries else ""
    if isinstance(e, openai.AuthenticationError):
        return UserError(f"{where} rejected the API key (HTTP 401); check OPENAI_API_KEY")
    if isinstance(e, openai.PermissionDeniedError):
        return UserError(f"{where} refused access (HTTP 403) to model {model!r}")
    if isinstance(e, openai.NotFoundError):
        return UserError(f"{where}: model {model!r} not found (HTTP 404)")
    if isinstance(e, openai.RateLimitError):
        return UserError(f"{where} is still rate-limiting (HTTP 429) after {max_retries} retries")
    if isinstance(e, openai.APITimeoutError):  # before APIConnectionError: a subclass of it
        return UserError(f"{where} did not answer within {timeout:g} s{retries}; check "
                         "OPENAI_BASE_URL and the network")  # fmt: skip
    if isinstance(e, openai.APIConnectionError):
        return UserError(f"cannot reach {where}; check OPENAI_BASE_URL and the network")
    if isinstance(e, openai.APIResponseValidationError | ValueError):
        return UserError(f"{where} returned a malformed response")  # also unparsable bodies
    if isinstance(e, openai.APIStatusError):
        detail = _redact(getattr(e, "message", ""), key)
        return UserError(
            f"{where} failed with HTTP {e.status_code} after {max_retries} retries"
            + (f": {detail}" if detail else "")
        )
    return UserError(f"LLM request failed: {_redact(e, key)}")


def check_endpoint(base_url: str | None = None, timeout: float = 5.0) -> None:
    """Before any work: the key is set and the endpoint answers it, else one UserError.

    One `GET /models` without retries: no answer (refused, unresolvable, silent past `timeout`)
    or a rejected key (401) fails at once. Any other HTTP answer means the server is there; some
    OpenAI-compatible servers do not list models, and the labelling requests report the rest.
    """
    import openai

    client, where = make_client(base_url, timeout, max_retries=0)
    try:
        client.models.list()
    except (openai.AuthenticationError, openai.APIConnectionError) as e:
        raise api_error(e, where, client.api_key, timeout=timeout, max_retries=0) from None
    except (openai.APIStatusError, openai.APIResponseValidationError, ValueError):
        pass  # it answered over HTTP: the endpoint is there


@dataclass
class LLMLabel:
    label: str
    in_vocabulary: bool
    response: str
    cached: bool


@dataclass
class LLMLabeller:
    """Labels heads (or, with the neurons' `system`, neurons) through the chat API. `cache`:
    {prompt_hash: response} from the store."""

    model: str
    vocabulary: Sequence[str]
    examples: Sequence[tuple[list[str], str]]
    cache: dict[str, str] = field(default_factory=dict)
    base_url: str | None = None
    timeout: float = 30.0
    max_retries: int = 3
    system: str = SYSTEM
    new_entries: list[tuple[str, str, str]] = field(default_factory=list)  # (hash, model, resp)
    _client: tuple | None = field(default=None, repr=False)  # make_client's (client, where)

    def _client_or_fail(self):
        if self._client is None:
            self._client = make_client(self.base_url, self.timeout, self.max_retries)
        return self._client

    def _ask(self, messages: list[dict[str, str]]) -> str:
        import openai

        client, where = self._client_or_fail()
        try:
            resp = client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=16
            )
        except (openai.OpenAIError, ValueError) as e:  # ValueError: an unparsable body
            raise api_error(e, where, client.api_key, timeout=self.timeout, max_retries=self.max_retries,
                            model=self.model) from None  # fmt: skip
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"{where} returned a malformed response (no answer text)")
        return content

    def label(self, texts: Sequence[str]) -> LLMLabel:
        """One head: texts [pick] best first -> its label (cached when asked before)."""
        messages = build_messages(texts, self.vocabulary, self.examples, self.system)
        h = prompt_hash(messages, self.model)
        cached = h in self.cache
        if cached:
            response = self.cache[h]
        else:
            response = self._ask(messages)
            self.cache[h] = response
            self.new_entries.append((h, self.model, response))
        label, known = map_answer(response, self.vocabulary)
        return LLMLabel(label, known, response, cached)
