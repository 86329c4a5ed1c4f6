"""A CLIP tokenizer with a small, word-level vocabulary of the project's own.

Real Stable Diffusion uses OpenAI's CLIP byte-pair-encoding (BPE) tokenizer with
49,408 entries. The bundled teaching model uses the same class,
``transformers.CLIPTokenizer``, with the same special tokens and the same fixed length
(77), but a vocabulary built here so that every word of the toy world is exactly one
token. Any other word still tokenizes, letter by letter, from the 512 byte-level base
symbols, exactly as CLIP's tokenizer does for rare words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _symbols(word: str) -> list[str]:
    """A word as CLIP's BPE starts it: byte symbols, the last one marked end-of-word."""
    byte_map = bytes_to_unicode()
    syms = [byte_map[b] for b in word.encode("utf-8")]
    syms[-1] = syms[-1] + END_OF_WORD
    return syms


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as CLIP does it: merge the lowest-ranked adjacent pair, repeat."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        rank, _ = min(pairs)
        a, b = next((a, b) for (a, b) in zip(symbols, symbols[1:]) if ranks.get((a, b)) == rank)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and BPE merges under which each of ``words`` is a single token.

    The vocabulary starts, like CLIP's, with the 256 byte symbols and the same 256 with
    the end-of-word mark; then one entry per merge; then BOS and EOS. Merges are added
    greedily: a word's merges only ever take effect after every earlier word's, so
    adding a word never changes how an earlier one is split.
    """
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    vocab_list = base + [s + END_OF_WORD for s in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"vocabulary words must be non-empty and contain no spaces, got {word!r}")
        pieces = _apply_bpe(_symbols(word), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            pieces = _apply_bpe(_symbols(word), ranks)
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges


def save_tokenizer_files(words: Iterable[str], folder: str | Path, *, max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the configs that ``CLIPTokenizer.from_pretrained`` reads.

    Files are in the layout of ``openai/clip-vit-large-patch14``'s tokenizer, so any
    transformers release that reads SD 1.x's tokenizer folder reads this one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def build_tokenizer(words: Iterable[str], folder: str | Path, *, max_length: int = 77):
    """Save a word-level CLIP tokenizer for ``words`` into ``folder`` and load it back.

    Returns a ``transformers.CLIPTokenizer`` whose ``model_max_length`` is ``max_length``.
    """
    from transformers import CLIPTokenizer

    save_tokenizer_files(words, folder, max_length=max_length)
    return CLIPTokenizer.from_pretrained(str(folder))
