"""Verifiable rewards for diagnosis prompts, in TRL's reward-function signature.

The prompts built by :mod:`fairgrpo.data` ask for ``\\boxed{yes}`` / ``\\boxed{no}`` (or a boxed
class name). :func:`extract_answer` reads the answer a completion gives (the last complete
``\\boxed{...}``, else a plain final answer); :func:`accuracy_reward` is the 0/1 correctness
reward GRPO optimises (ALGORITHM.md section 1), :func:`format_reward` an optional shaping
reward for answering in the requested format. Both accept plain-text and conversational
completions, as TRL's ``GRPOTrainer`` passes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["accuracy_reward", "completion_text", "extract_answer", "format_reward", "normalize_answer"]

_BOXED = re.compile(r"\\boxed\s*\{")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textit|operatorname)\s*\{(.*)\}$", re.DOTALL)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\s*:?|:|=)\s*([^\n.,;!?]+)", re.IGNORECASE)
_WORDS = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def normalize_answer(text: str) -> str:
    """Lower-case, collapse spaces, drop ``$``, ``\\text{}``, markdown emphasis, quotes and
    trailing punctuation: ``" **Yes.** "`` -> ``"yes"``."""
    s = " ".join(text.split()).strip()
    for _ in range(3):
        s = s.strip().strip("$").strip()
        m = _TEXT_WRAPPER.match(s)
        if m:
            s = m.group(1)
        s = s.strip("*_`\"' ").rstrip(".,;:!?").strip()
    return s.lower()


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete ``\\boxed{...}``; nested braces are balanced."""
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOXED.search(text, pos)
        if m is None:
            return spans
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth:  # unterminated (truncated completion): not an answer; look no further
            return spans
        spans.append((m.start(), i, text[m.end() : i - 1]))
        pos = i


def extract_answer(text: str, classes: Sequence[str] | None = None) -> str | None:
    """The answer a completion gives, normalised (lower-case, stripped), or ``None``.

    In order: the content of the last complete ``\\boxed{...}`` (nested braces allowed); the
    text after the last ``Answer:`` / ``answer is``; the completion's final word(s) if they
    are one of ``classes`` (default ``yes`` / ``no``).

    >>> extract_answer("so \\\\boxed{Yes}.")
    'yes'
    >>> extract_answer("Answer: no")
    'no'
    >>> extract_answer("I am not sure") is None
    True
    """
    if not text:
        return None
    spans = _boxed_spans(text)
    if spans:
        content = normalize_answer(spans[-1][2])
        return content or None
    options = [normalize_answer(c) for c in (classes if classes else ("yes", "no"))]
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        content = normalize_answer(matches[-1].group(1))
        if content:
            # "Answer: yes because ..." -> "yes"; anything else is returned as written
            leading = [o for o in options if o and (content == o or content.startswith(o + " "))]
            return max(leading, key=len) if leading else content
    words = [w.lower() for w in _WORDS.findall(text)]
    best: str | None = None
    for option in options:
        parts = option.split()
        if parts and words[-len(parts) :] == parts and (best is None or len(option) > len(best)):
            best = option
    return best


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form (a list of
    ``{"role", "content"}`` messages; the assistant messages' text is joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, Iterable):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        return "\n".join(_content_text(m.get("content")) for m in assistant)
    return "" if completion is None else str(completion)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when a completion's answer equals the reference ``answer`` (normalised), 0.0 when
    it is wrong or gives no answer; ``None`` (TRL: not scorable) when the reference is missing.

    ``answer`` is the dataset column of the same name; an optional ``classes`` column (list of
    class names per sample) widens the plain-final-word fallback beyond yes / no.
    """
    if len(completions) != len(answer):
        raise ValueError(f"accuracy_reward got {len(completions)} completions but {len(answer)} answers")
    classes = kwargs.get("classes")
    rewards: list[float | None] = []
    for i, (completion, reference) in enumerate(zip(completions, answer, strict=True)):
        if reference is None:
            rewards.append(None)
            continue
        options = classes[i] if classes is not None and i < len(classes) else None
        predicted = extract_answer(completion_text(completion), options)
        rewards.append(
            1.0 if predicted is not None and predicted == normalize_answer(str(reference)) else 0.0
        )
    return rewards


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when a completion holds exactly one non-empty ``\\boxed{...}`` and nothing
    substantial (no letter or digit) after it, else 0.0."""
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        spans = _boxed_spans(text)
        unterminated = len(_BOXED.findall(text)) != len(spans)
        ok = (
            len(spans) == 1
            and not unterminated
            and normalize_answer(spans[0][2]) != ""
            and not any(ch.isalnum() for ch in text[spans[0][1] :])
        )
        rewards.append(1.0 if ok else 0.0)
    return rewards


accuracy_reward.__name__ = "accuracy_reward"
format_reward.__name__ = "format_reward"
