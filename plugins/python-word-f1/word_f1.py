"""Token-overlap F1 between a completion and its reference (SQuAD-style bag of tokens).

Plain Python with no component bindings, so it is unit-tested natively: python3 -m unittest -v
"""

import json
import unicodedata
from collections import Counter
from typing import List, Optional

UNITS = ("words", "chars")


def parse_config(config_json: str) -> dict:
    """Validated config: {"unit": "words" | "chars", "lowercase": bool}. Raises ValueError."""
    text = config_json.strip() or "{}"
    config = json.loads(text) if text != "null" else {}
    if not isinstance(config, dict):
        raise ValueError(f"config must be a JSON object, got {text}")
    unknown = sorted(set(config) - {"unit", "lowercase"})
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: unit, lowercase")
    unit = config.get("unit", "words")
    if unit not in UNITS:
        raise ValueError(f"unit = {unit!r} must be one of {UNITS}")
    lowercase = config.get("lowercase", True)
    if not isinstance(lowercase, bool):
        raise ValueError(f"lowercase = {lowercase!r} must be true or false")
    return {"unit": unit, "lowercase": lowercase}


def _separator(c: str) -> bool:
    # Whitespace, punctuation (incl. the Tibetan tsheg and shad) and symbols separate words.
    return unicodedata.category(c)[0] in "ZPSC"


def tokens(text: str, unit: str = "words", lowercase: bool = True) -> List[str]:
    """Words (runs of non-separator characters) or single letters/digits of `text`."""
    if lowercase:
        text = text.lower()
    if unit == "chars":
        return [c for c in text if not _separator(c)]
    out, word = [], []
    for c in text:
        if _separator(c):
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(c)
    if word:
        out.append("".join(word))
    return out


def f1(prediction: List[str], reference: List[str]) -> float:
    """Harmonic mean of token precision and recall; 1 when both are empty, 0 when only one is."""
    if not prediction or not reference:
        return float(prediction == reference)
    same = sum((Counter(prediction) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(reference)
    return 2 * precision * recall / (precision + recall)


def score_group(config: dict, completions: List[str], references: List[Optional[str]]) -> List[Optional[float]]:
    """One F1 per completion; None where there is no reference."""
    tok = lambda t: tokens(t, config["unit"], config["lowercase"])  # noqa: E731
    return [None if ref is None else f1(tok(c), tok(ref)) for c, ref in zip(completions, references)]
