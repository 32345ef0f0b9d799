"""Text helpers shared by the chat endpoints: prompt extraction, replies and token estimates."""

from __future__ import annotations

import math
import re
from typing import Any

# CJK ideographs, kana and hangul are roughly one token per character.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_PER_MESSAGE_TOKENS = 4  # role and separators, as in OpenAI's counting recipe
_REPLY_PRIMING_TOKENS = 3


def estimate_tokens(text: str) -> int:
    """A realistic token estimate: one per CJK character, one per ~4 other characters."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    rest = len(text) - cjk
    return cjk + math.ceil(rest / 4)


def content_text(content: Any) -> str:
    """The text of a chat message ``content``: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(part for part in parts if isinstance(part, str))
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated prompt tokens of a message list, including per-message overhead."""
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        total += _PER_MESSAGE_TOKENS + estimate_tokens(content_text(message.get("content")))
    return total


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (what a reply is "about")."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return content_text(messages[-1].get("content")) if messages else ""


def all_text(messages: list[dict[str, Any]]) -> str:
    """All message texts joined, used to look for ``[[fail:…]]`` triggers."""
    return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))


def reply_for(prompt: str, model: str) -> str:
    """A deterministic assistant reply derived from the prompt."""
    snippet = " ".join(prompt.split())
    if len(snippet) > 200:
        snippet = snippet[:200] + "..."
    return f"[{model} simulated reply] You said: {snippet}"


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Cut ``text`` so that ``estimate_tokens`` of the result is at most ``max_tokens``."""
    if estimate_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)
    while low < high:  # binary search on the character count
        mid = (low + high + 1) // 2
        if estimate_tokens(text[:mid]) <= max_tokens:
            low = mid
        else:
            high = mid - 1
    return text[:low]
