#!/usr/bin/env python3
"""Generate tests/fixtures/tiny-bert/ and tests/fixtures/tiny-xlmr/: seeded random BERT-family encoders
small enough to commit, with reference sentence embeddings from transformers (f32, eager, CPU).

How to run (needs torch, transformers, tokenizers, safetensors; CI does not run this):
    /root/.venvs/fixtures/bin/python scripts/make_encoder_fixtures.py

Each folder holds config.json, model.safetensors, tokenizer.json, babelrl.json and expected.json:
  * tiny-bert: model_type "bert", tensor names with the "bert." prefix (as BertForMaskedLM checkpoints),
    a tokenizer.json that pads to 16 and truncates at 16 (as sentence-transformers' MiniLM file does, which
    the encoder must ignore), babelrl.json max_tokens 12 so one text is truncated.
  * tiny-xlmr: model_type "xlm-roberta" (positions from pad_token_id + 1 = 2), "roberta." prefix,
    babelrl.json query_prefix "query: ".
expected.json: per text its token ids (the tokenizers library, truncation as Hugging Face does it) and the
attention-mask mean of last_hidden_state, L2-normalised. Every 2-D weight (matrices, embedding tables) is
rounded to f16 before saving and computing the reference, as babelrl stores them at 16 bits.
"""

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

WORDS = ("the cat sits on mat and watches birds outside a dog runs in park with his friend reward model "
         "learns from human feedback query : . , ! ? language good bad very small big red blue green one two "
         "three four five six seven eight nine ten").split()

TEXTS = [
    "The cat sits on the mat.",
    "a dog runs in the park with his friend !",
    "",
    "reward model learns from human feedback , one two three four five six seven eight nine ten .",
    "zebra unknown words",
    "red",
]


def tokenizer(specials, cls, sep, pad, fixed_padding):
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[-1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    if fixed_padding:
        tok.enable_padding(pad_id=vocab[pad], pad_token=pad, length=16)
        tok.enable_truncation(max_length=16)
    return tok, len(vocab)


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if "LayerNorm.weight" in name:
                p.add_(1.0)
            if p.dim() == 2:
                # babelrl keeps matrices and embedding tables at 16 bits on the GPU (1-D weights stay
                # f32): make them f16-representable so the test measures kernel error, not storage
                # rounding (as scripts/make_fixtures.py does for the decoders).
                p.copy_(p.half().float())


def make(name, model_type, prefix, specials, cls, sep, pad, fixed_padding, babelrl, seed):
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    out = os.path.join(FIX, name)
    os.makedirs(out, exist_ok=True)
    tok, vocab = tokenizer(specials, cls, sep, pad, fixed_padding)
    tok.save(os.path.join(out, "tokenizer.json"))
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, hidden_act="gelu", type_vocab_size=2, layer_norm_eps=1e-12,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tok.token_to_id(pad),
                  position_embedding_type="absolute")
    if model_type == "bert":
        cfg = BertConfig(max_position_embeddings=40, **common)
        model = BertModel(cfg, add_pooling_layer=False)
    else:
        cfg = XLMRobertaConfig(max_position_embeddings=42, bos_token_id=0, eos_token_id=2, **common)
        model = XLMRobertaModel(cfg, add_pooling_layer=False)
    model.config._attn_implementation = "eager"
    randomise(model, seed)
    model.eval()
    cfg.to_json_file(os.path.join(out, "config.json"))
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("_ids")}
    save_file(state, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "babelrl.json"), "w") as f:
        json.dump(babelrl, f, indent=2)

    ref = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(max_length=babelrl["max_tokens"])
    rows = []
    for text in TEXTS:
        ids = ref.encode(babelrl["query_prefix"] + text).ids
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids))).last_hidden_state
        emb = torch.nn.functional.normalize(hidden[0].mean(0), dim=0)
        rows.append({"text": text, "ids": ids, "embedding": [round(float(x), 9) for x in emb]})
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"producer": "scripts/make_encoder_fixtures.py", "transformers": __import__("transformers").__version__,
                   "torch": torch.__version__, "texts": rows}, f, indent=1)
    print(f"{out}: {sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))} bytes")


def main():
    torch.manual_seed(0)
    make("tiny-bert", "bert", "bert.", ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"], "[CLS]", "[SEP]", "[PAD]",
         True, {"kind": "sentence-encoder", "query_prefix": "", "pooling": "mean", "normalize": True,
                "max_tokens": 12}, 1)
    make("tiny-xlmr", "xlm-roberta", "roberta.", ["<s>", "<pad>", "</s>", "<mask>", "<unk>"], "<s>", "</s>", "<pad>",
         False, {"kind": "sentence-encoder", "query_prefix": "query: ", "pooling": "mean", "normalize": True,
                 "max_tokens": 512}, 2)


if __name__ == "__main__":
    main()
