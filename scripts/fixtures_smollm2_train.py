"""SFT fixture on the real SmolLM2-135M-Instruct: loss and LoRA gradients of one short batch, torch + PEFT.

Run through scripts/make_fixtures.py (target `smollm2-train`; needs scripts/fetch_models.sh first):
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py smollm2-train
Writes tests/fixtures/smollm2-train-expected.safetensors (about 250 KB). Nothing in CI runs this script.

The base model: $BABELRL_CACHE/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf loaded as
scripts/fixtures_models.py loads it (transformers AutoModelForCausalLM.from_pretrained(gguf_file=...),
float32, eager attention, CPU): transformers dequantizes every tensor to f32 and un-permutes the q/k rows
llama.cpp's converter permuted. The script checks this against gguf-py directly: every tensor of the model
equals gguf.quants.dequantize of the GGUF tensor (q and k un-permuted by the inverse of
convert_hf_to_gguf.py's LlamaModel.permute), exactly. Then, as babelrl stores it on the GPU, every 2-D
weight (q, k, v, o, gate, up, down of every layer and embed_tokens, which is also the tied LM head) is
rounded to float16 (round to nearest even) and back to float32 in place; the norm weights stay f32.
Compute is float32 on the CPU, eager attention, deterministic algorithms.

The adapter: PEFT LoraConfig(r=2, lora_alpha=4, lora_dropout=0, target_modules = the seven projections,
bias "none", no rsLoRA), so each target computes W x + (4/2) * B (A x). PEFT's random init is then
overwritten by a formula both sides compute (nothing stored): for layer l (0..29) and target index ti
(q_proj=0, k_proj=1, v_proj=2, o_proj=3, gate_proj=4, up_proj=5, down_proj=6),
    A[i][j] = 0.02 * sin(0.1 + 0.7*l + 1.3*ti + 0.37*i + 0.011*j)      (A is (r, in))
    B[i][j] = 0.02 * cos(0.2 + 0.5*l + 0.9*ti + 0.23*i + 0.017*j)      (B is (out, r))
computed in float64 (the argument summed left to right as written) then cast to float32.

The batch: BATCH plain-text prompt/completion pairs (PAIRS below, no chat template). Prompt and completion are
tokenized separately with the model's tokenizer (transformers' tokenizer rebuilt from the GGUF metadata;
tokenizer.ggml.add_bos_token = false, so no BOS is added and none is added here) and concatenated; the
script checks that tokenizing prompt + completion as one string gives the same ids. No EOS is appended.
Sequence s has n_s tokens x_s[0..n_s), the first p_s of them the prompt.

The loss, exactly scripts/fixtures_train.py's (TRL SFT with completion-only loss):
    loss = (1 / N) * sum_s sum_{t = p_s}^{n_s - 1} -log softmax(z_s[t - 1])[x_s[t]],   N = sum_s (n_s - p_s)
z_s[t] the logits at position t of sequence s: the plain mean over every completion token of the batch,
each predicted from the position before it. Checked against transformers' own causal-LM loss (labels -100
on prompt and padding, right-padded batch) and against one unpadded pass per sequence; the gradients are
checked against the same unpadded passes (each sequence's NLL sum / N, backpropagated and accumulated).

What the file holds (float32 unless said):
    input_ids          int64 [sum n_s]  the sequences concatenated, no padding (the flat batch)
    lengths            int64 [BATCH]    n_s
    prompt_lengths     int64 [BATCH]    p_s
    labels             int64 [sum n_s]  x_s[t] where t >= p_s, else -100 (unshifted)
    loss               [1]
    grad.NAME          the LoRA gradients of layers 0, 14 and 29 (all seven targets, A and B); NAME is PEFT's
                       file name (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ...)
    grad_norm_all      [1]   sqrt of the sum of squares of every LoRA gradient of all 30 layers (float64 sum)
    grad_sq_per_layer  [30]  per layer, the sum of squares of its 14 LoRA gradients (float64 sum)
    param_sum_per_layer [30] per layer, the plain sum of its 14 LoRA tensors as the formula gives them
                             (float32 values, float64 sum): checks the formula before any gradient
The metadata holds the library versions, the GGUF's sha256, the formula, the f16 rounding rule, the loss
formula, the texts and the tokenization notes.
"""

import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, _gguf_version, log, torch_or_die  # noqa: E402
from fixtures_lora import TARGETS  # noqa: E402
from fixtures_models import SMOL_DIR, SMOL_FILE  # noqa: E402
from fixtures_train import peft_name, save_stable  # noqa: E402

PAIRS = [
    ("Translate to French: Good morning, my friend.", " Bonjour, mon ami."),
    ("Translate to Spanish: The library opens at nine and closes late.",
     " La biblioteca abre a las nueve y cierra tarde."),
    ("Translate to German: A cup of coffee and a piece of cake, please.",
     " Eine Tasse Kaffee und ein Stück Kuchen, bitte."),
]
BATCH = len(PAIRS)
RANK, ALPHA = 2, 4
KEPT_LAYERS = (0, 14, 29)
PAD_ID = 0
OUT_NAME = "smollm2-train-expected.safetensors"
LORA_FORMULA = (
    "for layer l (0..29) and target index ti (q_proj=0, k_proj=1, v_proj=2, o_proj=3, gate_proj=4, up_proj=5, "
    "down_proj=6): A[i][j] = 0.02 * sin(0.1 + 0.7*l + 1.3*ti + 0.37*i + 0.011*j) (A is (r, in)); "
    "B[i][j] = 0.02 * cos(0.2 + 0.5*l + 0.9*ti + 0.23*i + 0.017*j) (B is (out, r)); computed in float64 "
    "(argument summed left to right as written) then cast to float32; r = 2, lora_alpha = 4, scaling 2")
ROUNDING = ("every 2-D weight (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj of every layer, and "
            "model.embed_tokens = the tied lm_head) rounded f32 -> float16 (round to nearest even, torch .half()) "
            "-> float32 in place after transformers dequantized the GGUF; input_layernorm, "
            "post_attention_layernorm and model.norm stay f32 as dequantized")
LOSS_FORMULA = ("loss = (1/N) * sum_s sum_{t=p_s}^{n_s-1} -log softmax(z_s[t-1])[x_s[t]], N = sum_s (n_s - p_s); "
                "z_s[t] = logits at position t of sequence s, x_s = input_ids of s, p_s = prompt_lengths[s], "
                "n_s = lengths[s]; no EOS appended")


def lora_values(layer, ti, rows, cols, kind):
    """The formula of the docstring: float64, then float32. kind 'A' (rows = r) or 'B' (cols = r)."""
    i = np.arange(rows, dtype=np.float64)[:, None]
    j = np.arange(cols, dtype=np.float64)[None, :]
    if kind == "A":
        v = 0.02 * np.sin(0.1 + 0.7 * layer + 1.3 * ti + 0.37 * i + 0.011 * j)
    else:
        v = 0.02 * np.cos(0.2 + 0.5 * layer + 0.9 * ti + 0.23 * i + 0.017 * j)
    return v.astype(np.float32)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpermute_qk(w, n_head):
    """Inverse of convert_hf_to_gguf.py LlamaModel.permute (GGML interleaved-RoPE rows -> HF rotate-half)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_against_gguf(torch, model, path):
    """Every tensor transformers loaded equals gguf-py's dequantization of the file (q/k un-permuted)."""
    import gguf
    from gguf.quants import dequantize

    cfg = model.config
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per_layer = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
    for l in range(cfg.num_hidden_layers):
        for g, h in per_layer.items():
            names["blk.%d.%s.weight" % (l, g)] = "model.layers.%d.%s.weight" % (l, h)
    params = dict(model.named_parameters())
    reader = gguf.GGUFReader(path)
    seen = set()
    for t in reader.tensors:
        if t.name not in names:
            sys.exit("make_fixtures.py smollm2-train: unexpected GGUF tensor %s in %s" % (t.name, path))
        want = dequantize(t.data, t.tensor_type).astype(np.float32)
        want = want.reshape([int(x) for x in reversed(t.shape)])
        if ".attn_q." in t.name:
            want = unpermute_qk(want, cfg.num_attention_heads)
        elif ".attn_k." in t.name:
            want = unpermute_qk(want, cfg.num_key_value_heads)
        got = params[names[t.name]].detach().numpy()
        if got.shape != want.shape or not np.array_equal(got, want):
            sys.exit("make_fixtures.py smollm2-train: transformers' %s differs from gguf-py's dequantized %s"
                     % (names[t.name], t.name))
        seen.add(names[t.name])
    missing = sorted(set(params) - seen)
    assert missing == [] and model.lm_head.weight is model.model.embed_tokens.weight, missing
    return len(seen)


def round_weights_f16(torch, model):
    """Every 2-D weight rounded to float16 and back in place; 1-D (the norms) untouched."""
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
                count += 1
            else:
                assert p.dim() == 1 and name.endswith("norm.weight"), name
    return count


def tokenize(tok):
    seqs, lens = [], []
    for prompt, completion in PAIRS:
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        joined = tok(prompt + completion, add_special_tokens=True)["input_ids"]
        assert joined == p + c, ("prompt + completion tokenizes differently joined", prompt, completion)
        seqs.append(np.array(p + c, dtype=np.int64))
        lens.append((len(p) + len(c), len(p)))
    return seqs, lens


def padded(torch, seqs, lens):
    width = max(n for n, _ in lens)
    ids = torch.full((BATCH, width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((BATCH, width), dtype=torch.long)
    labels = torch.full((BATCH, width), -100, dtype=torch.long)
    for i, (s, (n, p)) in enumerate(zip(seqs, lens)):
        ids[i, :n] = torch.from_numpy(s)
        mask[i, :n] = 1
        labels[i, p:n] = torch.from_numpy(s[p:])
    return ids, mask, labels


def sft_loss(torch, model, ids, mask, labels):
    """fixtures_train.py's formula written out: shift, gather, plain mean over the labelled positions."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum()


def check_loss(torch, model, seqs, lens, ids, mask, labels, loss):
    """The same loss from transformers' own causal-LM loss and from one unpadded pass per sequence."""
    with torch.no_grad():
        hf = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        total, count = 0.0, 0
        for s, (n, p) in zip(seqs, lens):
            logits = model(input_ids=torch.from_numpy(s)[None]).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            total += float(-lp[torch.arange(p - 1, n - 1), torch.from_numpy(s[p:])].sum())
            count += n - p
    assert abs(hf - loss) < 1e-5, ("transformers' loss differs", hf, loss)
    assert abs(total / count - loss) < 1e-5, ("the unpadded per-sequence loss differs", total / count, loss)
    return hf, total / count


def check_grads_unpadded(torch, model, seqs, lens, lora, grads):
    """The gradients again from one unpadded pass per sequence (sum of its completion NLL over N, backward
    each, accumulated): padding and the attention mask must change nothing. Returns the worst difference
    relative to the tensor's largest gradient."""
    n_total = sum(n - p for n, p in lens)
    for _, p in lora:
        p.grad = None
    for s, (n, p) in zip(seqs, lens):
        logits = model(input_ids=torch.from_numpy(s)[None]).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        (-lp[torch.arange(p - 1, n - 1), torch.from_numpy(s[p:])].sum() / n_total).backward()
    worst = 0.0
    for (name, p), g in zip(lora, grads):
        diff = float(np.abs(p.grad.numpy() - g).max()) / float(np.abs(g).max())
        worst = max(worst, diff)
        assert diff < 1e-5, ("unpadded per-sequence gradient differs", name, diff)
    return worst


def make_smollm2_train():
    torch = torch_or_die()
    import peft
    import tokenizers
    import transformers

    path = os.path.join(SMOL_DIR, SMOL_FILE)
    if not os.path.exists(path):
        sys.exit("make_fixtures.py smollm2-train: %s missing; run scripts/fetch_models.sh" % path)
    tok = transformers.AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE)
    base = transformers.AutoModelForCausalLM.from_pretrained(
        SMOL_DIR, gguf_file=SMOL_FILE, dtype=torch.float32, attn_implementation="eager")
    cfg = base.config
    assert getattr(cfg, "attention_dropout", 0.0) == 0.0 and cfg.tie_word_embeddings, cfg
    n_checked = check_against_gguf(torch, base, path)
    n_rounded = round_weights_f16(torch, base)
    log("smollm2-train: %d tensors equal gguf-py's dequantization; %d 2-D weights rounded to f16"
        % (n_checked, n_rounded))

    lcfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS),
                           bias="none", use_rslora=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, lcfg)
    model.train()
    lora = [(peft_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    n_layers = cfg.num_hidden_layers
    assert len(lora) == 2 * len(TARGETS) * n_layers, len(lora)
    param_sum = np.zeros(n_layers, dtype=np.float64)
    layer_of = {}
    with torch.no_grad():
        for name, p in lora:
            parts = name.split(".")
            layer = int(parts[parts.index("layers") + 1])
            target = next(t for t in TARGETS if "." + t + "." in name)
            kind = "A" if ".lora_A." in name else "B"
            assert (".lora_%s.weight" % kind) in name, name
            rows, cols = p.shape
            assert (rows if kind == "A" else cols) == RANK, (name, p.shape)
            v = lora_values(layer, TARGETS.index(target), rows, cols, kind)
            p.copy_(torch.from_numpy(v))
            param_sum[layer] += v.astype(np.float64).sum()
            layer_of[name] = layer

    seqs, lens = tokenize(tok)
    ids, mask, labels = padded(torch, seqs, lens)
    loss = sft_loss(torch, model, ids, mask, labels)
    loss.backward()
    hf, unpadded = check_loss(torch, model, seqs, lens, ids, mask, labels, loss.item())
    grads = [p.grad.detach().numpy().astype(np.float32).copy() for _, p in lora]
    grad_drift = check_grads_unpadded(torch, model, seqs, lens, lora, grads)

    exp = {}
    sq = np.zeros(n_layers, dtype=np.float64)
    for (name, _), g in zip(lora, grads):
        assert np.abs(g).max() > 0, ("zero gradient", name)
        sq[layer_of[name]] += float((g.astype(np.float64) ** 2).sum())
        if layer_of[name] in KEPT_LAYERS:
            exp["grad." + name] = g.copy()
    assert len(exp) == 2 * len(TARGETS) * len(KEPT_LAYERS), len(exp)
    norm_all = float(np.sqrt(sq.sum()))

    flat = np.concatenate(seqs)
    flat_labels = np.concatenate([np.where(np.arange(n) >= p, s, -100) for s, (n, p) in zip(seqs, lens)])
    exp.update({
        "input_ids": flat.astype(np.int64),
        "lengths": np.array([n for n, _ in lens], dtype=np.int64),
        "prompt_lengths": np.array([p for _, p in lens], dtype=np.int64),
        "labels": flat_labels.astype(np.int64),
        "loss": np.array([loss.item()], dtype=np.float32),
        "grad_norm_all": np.array([norm_all], dtype=np.float32),
        "grad_sq_per_layer": sq.astype(np.float32),
        "param_sum_per_layer": param_sum.astype(np.float32),
    })
    meta = {
        "producer": "scripts/fixtures_smollm2_train.py (make_fixtures.py smollm2-train)",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "gguf": _gguf_version(), "tokenizers": tokenizers.__version__,
        "model": "$BABELRL_CACHE/models/smollm2-135m-instruct/" + SMOL_FILE,
        "model_sha256": sha256_of(path),
        "load": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, eager attention): "
                "dequantized to f32, q/k un-permuted; checked equal to gguf.quants.dequantize of every tensor",
        "f16_rounding": ROUNDING,
        "compute": "float32 eager CPU, train mode (dropout 0), deterministic algorithms, one padded batch",
        "adapter": "peft.LoraConfig(r=%d, lora_alpha=%d, lora_dropout=0, target_modules=%s, bias='none', "
                   "use_rslora=False); output W x + (alpha/r) * B (A x)" % (RANK, ALPHA, ",".join(TARGETS)),
        "lora_formula": LORA_FORMULA,
        "loss_formula": LOSS_FORMULA,
        "pairs": json.dumps(PAIRS, ensure_ascii=False),
        "tokenization": "transformers' tokenizer from the GGUF metadata; prompt tokenized with "
                        "add_special_tokens=True (adds nothing: tokenizer.ggml.add_bos_token=false, so no BOS), "
                        "completion with add_special_tokens=False, concatenated (equal to tokenizing the joined "
                        "text); no chat template, no EOS",
        "loss_checks": "transformers' causal-LM loss (labels -100) %.9f; unpadded per-sequence passes (float64 "
                       "log-softmax) %.9f; gradients from unpadded per-sequence passes differ by at most %.2g of each "
                       "tensor's largest |gradient|" % (hf, unpadded, grad_drift),
        "keys": "grad.NAME for layers %s only (PEFT file names); grad_norm_all = sqrt(sum of squares of all "
                "LoRA gradients, all layers); grad_sq_per_layer[l] = sum of squares of layer l's 14 LoRA "
                "gradients; param_sum_per_layer[l] = sum of layer l's 14 LoRA tensors (formula values); "
                "input_ids/labels flat (no padding), split by 'lengths'" % ",".join(map(str, KEPT_LAYERS)),
    }
    out = os.path.join(FIX, OUT_NAME)
    save_stable(exp, out, meta)
    size = os.path.getsize(out)
    assert size < 400_000, ("fixture too large", size)
    log("%s: %d bytes; lengths %s, prompts %s; loss %.6f; grad_norm_all %.6f; per-layer grad norm min %.3g "
        "(layer %d) max %.3g (layer %d)" % (OUT_NAME, size, [n for n, _ in lens], [p for _, p in lens],
                                            loss.item(), norm_all, np.sqrt(sq.min()), int(sq.argmin()),
                                            np.sqrt(sq.max()), int(sq.argmax())))


if __name__ == "__main__":
    sys.exit(__doc__)
