#!/usr/bin/env python3
"""Record transformers' token ids for GGUF tokenizers that babelrl's `Tokenizer::from_gguf` rebuilds.

Writes tests/fixtures/qwen25-tokenizer-reference.json: ids of several strings (digits, whitespace,
contractions, CJK, emoji, special tokens) from `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
for the Qwen2.5-Coder GGUF (`tokenizer.ggml.pre = qwen2`), and the decoded text. `ids_nfc` are the
ids of the NFC-normalised text: Qwen2's own tokenizer.json normalises to NFC (as babelrl does), while
transformers' GGUF converter and llama.cpp skip that step, so the two differ only on non-NFC input.

    /root/.venvs/fixtures/bin/python scripts/gguf_tokenizer_fixture.py
"""

import json
import os
import sys
import unicodedata

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BABELRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "babelrl"))
MODEL_DIR = os.path.join(CACHE, "models", "qwen2.5-coder-0.5b-instruct")
GGUF = "qwen2.5-coder-0.5b-instruct-q.gguf"
OUT = os.path.join(ROOT, "tests", "fixtures", "qwen25-tokenizer-reference.json")

STRINGS = [
    "Hello, world! It's 2025; we'll see.",
    "12345 67.89 3,141,592",
    "  leading and   multiple   spaces\tand\ttabs\n\n\nnewlines ",
    "def f(x):\n    return x**2  # square\r\n",
    "中文测试，日本語のテキスト、한국어 😀👍🏽",
    "Ünïcödé ｆｕｌｌｗｉｄｔｈ e\u0301 (combining)",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<tool_call>x</tool_call>",
    "བཀྲ་ཤིས་བདེ་ལེགས། DON'T Stop",
]


def main():
    path = os.path.join(MODEL_DIR, GGUF)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run scripts/fetch_models.sh first")
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    cases = []
    for s in STRINGS:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        ids_nfc = tok(unicodedata.normalize("NFC", s), add_special_tokens=True)["input_ids"]
        cases.append({"text": s, "ids": ids, "ids_nfc": ids_nfc, "decoded": tok.decode(ids, skip_special_tokens=False)})
    import transformers

    doc = {
        "producer": "scripts/gguf_tokenizer_fixture.py",
        "model": f"$BABELRL_CACHE/models/qwen2.5-coder-0.5b-instruct/{GGUF}",
        "method": "AutoTokenizer.from_pretrained(dir, gguf_file=...), add_special_tokens=True",
        "versions": {"transformers": transformers.__version__},
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} strings")


if __name__ == "__main__":
    main()
