"""Token estimates for when a provider reports no usage (a cancelled or dropped stream,
a backend that cannot send stream usage).

The rule is deliberately simple and documented, so an operator can reproduce it:
a prompt costs ``ceil(chars / 4)`` tokens for its text plus 3 per message; a
streamed answer costs one token per content-bearing chunk (what OpenAI-style
servers send). Estimates are labelled ``source="estimated"`` in every sink.
"""

from __future__ import annotations

from typing import Any

PER_MESSAGE = 3


def text_chars(content: Any) -> int:
    """Characters of text in a message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def estimate_prompt_tokens(messages: Any) -> int:
    """Estimate the prompt tokens of a chat ``messages`` list."""
    if not isinstance(messages, list):
        return 0
    chars = 0
    for message in messages:
        if isinstance(message, dict):
            chars += text_chars(message.get("content"))
    return -(-chars // 4) + PER_MESSAGE * len(messages)


def estimate_input_tokens(value: Any) -> int:
    """Estimate the tokens of an embeddings ``input`` (a string or a list of strings/ids)."""
    if isinstance(value, str):
        return -(-len(value) // 4)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # already token ids
        return sum(estimate_input_tokens(v) for v in value)
    return 0


def estimate_answer_tokens(answer: Any) -> int:
    """Estimate the output tokens of a whole OpenAI chat completion (a parsed body) that
    reports no usage: its choices' text, reasoning and tool-call arguments, by the same
    ``ceil(characters / 4)`` rule as prompts."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return 0
    chars = 0
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        chars += text_chars(message.get("content"))
        reasoning = message.get("reasoning_content")
        chars += len(reasoning) if isinstance(reasoning, str) else 0
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            chars += len(arguments) if isinstance(arguments, str) else 0
    return -(-chars // 4)
