#!/usr/bin/env python3
"""Make tests/fixtures/tiny-spm-gguf/: a tiny SentencePiece-BPE vocabulary as GGUF `llama` tokenizer
metadata, with reference ids from sentencepiece itself, for `Tokenizer::from_gguf`'s `llama` path.

A 700-piece BPE model (byte fallback, digits split, identity normalisation, no whitespace
squeezing: the settings of Llama/Mistral tokenizers) is trained on FLORES-200 dev sentences
(English, French, German, Russian; ../shared/data or $BABELRL_DATA). Its pieces, scores and token
types are written the way llama.cpp's `convert_hf_to_gguf.py` (`_create_vocab_sentencepiece`)
writes them; `tiny-spm.gguf` has no tensors. `reference.json` holds `sp.encode(text)` ids (BOS
added, as `tokenizer.ggml.add_bos_token = true` asks) and `sp.decode` of them.

    /root/.venvs/fixtures/bin/python scripts/spm_tokenizer_fixture.py
"""

import io
import json
import os

import gguf
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("BABELRL_DATA", os.path.join(ROOT, "..", "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-spm-gguf")

STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and  double  spaces ",
    "Numbers: 1234567 and 3.14159",
    "Le chat dort sur le canapé. Ça va?",
    "Привет, как дела?",
    "Unseen script: 中文 😀 བཀྲ་ཤིས",
    "line one\nline two\ttab",
]


def main():
    lines = []
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl"):
        with open(os.path.join(DATA, "flores200", "dev", f"{lang}.dev"), encoding="utf-8") as f:
            lines += [line.rstrip("\n") for line in f][:400]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())

    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)

    os.makedirs(OUT, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny-spm.gguf"), "llama")
    w.add_name("babelrl tiny-spm")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    cases = []
    for s in STRINGS:
        ids = [1] + sp.encode(s)
        cases.append({"text": s, "ids": ids, "decoded": sp.decode(ids)})
    doc = {
        "producer": "scripts/spm_tokenizer_fixture.py",
        "method": "sentencepiece BPE (byte_fallback, split_digits, identity normalisation); ids = [bos] + sp.encode(text)",
        "versions": {"sentencepiece": spm.__version__, "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "?"},
        "vocab_size": sp.get_piece_size(),
        "cases": cases,
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(tokens)} pieces, {len(cases)} strings")


if __name__ == "__main__":
    main()
