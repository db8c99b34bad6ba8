"""Answer extraction and the TRL reward functions."""

from __future__ import annotations

import pytest

from fairgrpo.rewards import accuracy_reward, completion_text, extract_answer, format_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{yes}", "yes"),
        (r"The patient likely has disease. \boxed{Yes}.", "yes"),
        (r"$\boxed{ NO }$", "no"),
        (r"\boxed{\text{yes}}", "yes"),
        (r"\boxed{**no**}", "no"),
        (r"\boxed{a{b}c}", "a{b}c"),  # nested braces stay balanced
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{yes}, on reflection \boxed{no}", "no"),  # the last box wins
        (r"\boxed{yes} then \boxed{no", "yes"),  # an unterminated box is ignored
        (r"\boxed {yes}", "yes"),
        ("Answer: yes", "yes"),
        ("The answer is no.", "no"),
        ("Final answer: **No**", "no"),
        ("answer is yes because of the ST depression", "yes"),
        ("I think yes", "yes"),
        ("Heart disease: no", "no"),
        ("maybe", None),
        ("", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_with_class_names() -> None:
    classes = ["typical angina", "angina", "none"]
    assert extract_answer("it looks like typical angina", classes) == "typical angina"
    assert extract_answer("so: Angina.", classes) == "angina"
    assert extract_answer("no idea", classes) is None


def test_completion_text_chat_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": r"\boxed{yes}"}]) == r"\boxed{yes}"
    parts = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Answer: "}, {"type": "text", "text": "no"}],
        }
    ]
    assert completion_text(parts) == "Answer: no"


def test_accuracy_reward_plain_and_conversational() -> None:
    completions = [
        r"\boxed{yes}",
        r"\boxed{no}",
        "Answer: No",
        "no answer here",
        [{"role": "assistant", "content": r"I conclude \boxed{Yes}."}],
        [{"role": "assistant", "content": "hmm"}],
    ]
    answers = ["yes", "yes", "no", "no", "yes", "no"]
    assert accuracy_reward(completions, answers) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_accuracy_reward_class_names_and_missing_reference() -> None:
    classes = [["Benign", "Malignant"]] * 3
    rewards = accuracy_reward(
        [r"\boxed{malignant}", "it is Benign", "x"], ["Malignant", "Benign", None], classes=classes
    )
    assert rewards == [1.0, 1.0, None]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["a", "b"], ["yes"])


def test_format_reward() -> None:
    completions = [
        r"\boxed{yes}",
        r"Reasoning first. \boxed{no}.",
        r"$\boxed{no}$",
        r"\boxed{yes} because the ST depression is high",
        r"\boxed{yes} \boxed{no}",
        "yes",
        r"\boxed{}",
        r"\boxed{yes",
        [{"role": "assistant", "content": r"\boxed{no}"}],
    ]
    assert format_reward(completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_reward_function_names() -> None:
    # TRL logs each reward under its function's __name__
    assert accuracy_reward.__name__ == "accuracy_reward"
    assert format_reward.__name__ == "format_reward"
