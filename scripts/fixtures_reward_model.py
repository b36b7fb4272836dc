"""Reward-model fixtures for make_fixtures.py (target `reward-model`): tiny random scalar-head decoders as
transformers' AutoModelForSequenceClassification (num_labels=1) saves them, a PEFT LoRA adapter with the
`score` head in `modules_to_save` (what a Bradley-Terry run saves), and the scores transformers gives.

Run through scripts/make_fixtures.py (see that file for how). Writes tests/fixtures/tiny-rm-{llama,qwen2}/:
    config.json, model.safetensors     save_pretrained of *ForSequenceClassification (base weights + score.weight)
    tokenizer.json, tokenizer_config.json   the tiny byte-level BPE of the GGUF fixture; BOS <|im_start|>
                                       added by the post-processor; eos <|im_end|>; pad <|endoftext|>
                                       (llama) or pad = eos (qwen2, TRL's fallback when a tokenizer has no pad)
    expected.json                      PAIRS, their input ids and transformers' scores, batched with padding
    peft/ (llama only)                 adapter_config.json + adapter_model.safetensors (task SEQ_CLS, LoRA r=4
                                       on all projections, score in modules_to_save) over base ".." and its
                                       scores in peft/expected.json
Input as TRL's RewardTrainer builds it for a standard (non-conversational) example: the text
prompt + completion + eos_token (eos appended unless the completion already ends with it), tokenized with
the tokenizer's special tokens; the score is the head on the rightmost token that is not pad_token_id.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (COMMON, FIX, GGUF_SPECIALS, dir_size, hf_tokenizer_for, log,  # noqa: E402
                           randomise, torch_or_die, train_tiny_bpe)

VOCAB = 300
PAIRS = [
    ("the quick brown fox", " jumps over the lazy dog."),
    ("hello", " world"),
    ("The rain in Spain", " stays mainly in the plain. 123"),
    ("hi", "<|im_end|>"),  # already ends with eos: nothing appended
    ("theory of the thing: ", "the other thing ran in and out, then out and in again."),
]
MODELS = {
    # name: (config class, model class, extra config, pad token, seed)
    "tiny-rm-llama": ("LlamaConfig", "LlamaForSequenceClassification",
                      dict(rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False), "<|endoftext|>", 2001),
    "tiny-rm-qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification",
                      dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False), "<|im_end|>", 2002),
}


def write_tokenizer(out, pad):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokens, merges = train_tiny_bpe(VOCAB)
    tok = hf_tokenizer_for(tokens, merges)
    bos = GGUF_SPECIALS[1]
    tok.post_processor = processors.TemplateProcessing(single=bos + " $A", pair=bos + " $A " + bos + " $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=GGUF_SPECIALS[2], pad_token=pad)
    fast.save_pretrained(out)
    return fast


def scores_of(torch, model, tok, pairs):
    """TRL RewardTrainer's input for each pair, right-padded into one batch; transformers' scores."""
    ids = []
    for p, c in pairs:
        text = p + c
        if not text.endswith(tok.eos_token):
            text += tok.eos_token
        ids.append(tok(text)["input_ids"])
    width = max(len(i) for i in ids)
    batch = [i + [tok.pad_token_id] * (width - len(i)) for i in ids]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask)).logits[:, 0]
    return ids, [float(s) for s in out]


def write_expected(path, model_dir, ids, scores, extra=None):
    import transformers

    doc = {"producer": "scripts/fixtures_reward_model.py", "transformers": transformers.__version__,
           "input": "prompt + completion + eos_token (unless already there), tokenizer(text) with special tokens",
           "pairs": [{"prompt": p, "completion": c, "input_ids": i, "score": s}
                     for (p, c), i, s in zip(PAIRS, ids, scores)]}
    doc.update(extra or {})
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


def make_reward_model():
    torch = torch_or_die()
    import transformers

    for name, (cfg_cls, model_cls, extra, pad, seed) in MODELS.items():
        out = os.path.join(FIX, name)
        os.makedirs(out, exist_ok=True)
        tok = write_tokenizer(out, pad)
        common = dict(COMMON, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, num_labels=1)
        cfg = getattr(transformers, cfg_cls)(**common, **extra)
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(cfg).eval()
        randomise(torch, model, seed)
        with torch.no_grad():  # f16-representable matrices: the test measures kernels, not storage rounding
            for _, p in model.named_parameters():
                if p.dim() == 2:
                    p.copy_(p.half().float())
        model.save_pretrained(out)
        gen = os.path.join(out, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
        ref = getattr(transformers, model_cls).from_pretrained(out, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
        ids, scores = scores_of(torch, ref, tok, PAIRS)
        write_expected(os.path.join(out, "expected.json"), out, ids, scores)
        log("%s: %d bytes, scores %s" % (name, dir_size(out), ["%.4f" % s for s in scores]))
        if name == "tiny-rm-llama":
            make_peft(torch, ref, tok, out, seed)


def make_peft(torch, base, tok, base_dir, seed):
    from peft import LoraConfig, TaskType, get_peft_model

    out = os.path.join(base_dir, "peft")
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero B and a new head, as after training
        for n, p in model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_((0.1 * torch.randn(p.shape, generator=g)).half().float())
    model.save_pretrained(out)
    cpath = os.path.join(out, "adapter_config.json")
    with open(cpath) as f:
        c = json.load(f)
    c["base_model_name_or_path"] = ".."  # the fixture's base, relative to the adapter folder
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    ids, scores = scores_of(torch, model, tok, PAIRS)
    write_expected(os.path.join(out, "expected.json"), out, ids, scores)
    log("tiny-rm-llama/peft: scores %s" % ["%.4f" % s for s in scores])
