"""SFT training fixtures for make_fixtures.py: loss, LoRA gradients and three AdamW steps, from torch + PEFT.

Run through scripts/make_fixtures.py (target `train`, after `tiny` and `lora`):
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py train
For each tests/fixtures/tiny-{qwen2,qwen3,llama}/ it loads the model in float32 (eager attention, CPU) with
the committed PEFT adapter from lora/ (is_trainable=True, lora_dropout 0, attention dropout 0, train mode),
builds one fixed SFT batch and writes lora/train-expected.safetensors. Nothing in CI runs this script; the
Rust test that consumes the file (the training walk, issue 7) comes next.

The batch: BATCH sequences of different lengths, token ids seeded (numpy default_rng(seed + 700)) and drawn
from [FIRST_ID, vocab) so no BOS/EOS/pad id appears; no EOS is appended. Sequence s has n_s tokens x_s[0..n_s),
the first p_s of them the prompt, the rest the completion. For torch the sequences are right-padded (pad id 0,
attention mask 0); the loss does not depend on the padding (checked against one unpadded pass per sequence).

The loss (TRL SFT with completion-only loss; transformers' causal-LM loss, labels -100 on prompt and padding):
    loss = (1 / N) * sum_s sum_{t = p_s}^{n_s - 1} -log softmax(z_s[t - 1])[x_s[t]],   N = sum_s (n_s - p_s)
where z_s[t] are the logits at position t of sequence s: the plain mean over every completion token of the
batch (not a mean of per-sequence means), each completion token predicted from the position before it.

Training: torch.optim.AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01 on every LoRA tensor,
single-tensor path), torch.nn.utils.clip_grad_norm_(max_norm 1.0) on all LoRA gradients, and
transformers.get_linear_schedule_with_warmup(num_warmup_steps 1, num_training_steps 3), stepped after each
optimizer step. So the learning rates the three steps use are 0, 1e-3, 5e-4 (warmup step 0 has lr 0: the
moments move, the parameters do not). Each step recomputes the loss on the same batch, backpropagates, clips,
steps the optimizer, steps the schedule.

What the file holds (float32 unless said):
    input_ids        int64 [sum n_s]   the sequences concatenated, no padding (the flat batch)
    lengths          int64 [BATCH]     n_s
    prompt_lengths   int64 [BATCH]     p_s
    labels           int64 [sum n_s]   x_s[t] where t >= p_s, else -100 (unshifted: the label of the token itself)
    loss             [1]               the loss on the adapter as committed (= loss_per_step[0])
    grad.NAME        every LoRA gradient of that loss, NAME = PEFT's tensor name as in adapter_model.safetensors
                     (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ...)
    loss_per_step    [3]               the loss each step computed before its update
    grad_norm        [3]               the global L2 norm of the LoRA gradients each step, before clipping
    lr               [3]               the learning rate each step used
    loss_after       [1]               the loss after step 3
    param.NAME       every LoRA tensor after step 3
The metadata holds the library versions, the hyperparameters (JSON), the loss formula and the key layout.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, TINY, log, torch_or_die  # noqa: E402
from fixtures_lora import TARGETS, load_base  # noqa: E402

# (total length n_s, prompt length p_s) per sequence: different lengths, none a multiple of anything handy.
SEQS = ((13, 5), (7, 3), (10, 6))
BATCH = len(SEQS)
FIRST_ID = 3  # ids 0..2 are pad/BOS/EOS in the tiny configs
STEPS = 3
PAD_ID = 0
CONFIG = dict(
    learning_rate=1e-3,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    weight_decay=0.01,
    max_grad_norm=1.0,
    lr_scheduler_type="linear",
    warmup_steps=1,
    max_steps=STEPS,
    gradient_accumulation_steps=1,
    lora_dropout=0.0,
    loss="mean cross-entropy over all completion tokens of the batch (TRL SFT, completion_only_loss)",
)
LOSS_FORMULA = ("loss = (1/N) * sum_s sum_{t=p_s}^{n_s-1} -log softmax(z_s[t-1])[x_s[t]], N = sum_s (n_s - p_s); "
                "z_s[t] = logits at position t of sequence s, x_s = input_ids of s, p_s = prompt_lengths[s], "
                "n_s = lengths[s]; no EOS appended")


def peft_name(param_name):
    """PEFT's file name for a LoRA parameter: the module's name without the adapter name ('.default')."""
    assert ".default." in param_name, param_name
    return param_name.replace(".default.", ".")


def save_stable(tensors, path, metadata):
    """safetensors' save_file, then the header rewritten with sorted keys: the library writes its metadata map
    in a random order, so without this two identical runs give different bytes. Offsets are unchanged."""
    import struct

    from safetensors.numpy import load_file, save_file

    save_file(tensors, path, metadata=metadata)
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + raw[8 + n:])
    back = load_file(path)
    assert sorted(back) == sorted(tensors) and all((back[k] == tensors[k]).all() for k in tensors), path


def make_batch(seed, vocab):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(FIRST_ID, vocab, size=n).astype(np.int64) for n, _ in SEQS]
    return seqs


def padded(torch, seqs):
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding) as TRL's collator builds."""
    width = max(len(s) for s in seqs)
    ids = torch.full((BATCH, width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((BATCH, width), dtype=torch.long)
    labels = torch.full((BATCH, width), -100, dtype=torch.long)
    for i, (s, (n, p)) in enumerate(zip(seqs, SEQS)):
        ids[i, :n] = torch.from_numpy(s)
        mask[i, :n] = 1
        labels[i, p:n] = torch.from_numpy(s[p:])
    return ids, mask, labels


def sft_loss(torch, model, ids, mask, labels):
    """The docstring's formula, written out: shift, gather, plain mean over the labelled positions."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum()


def check_loss(torch, model, seqs, ids, mask, labels, loss):
    """The same loss from transformers' own causal-LM loss and from one unpadded pass per sequence."""
    with torch.no_grad():
        hf = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        total, count = 0.0, 0
        for s, (n, p) in zip(seqs, SEQS):
            logits = model(input_ids=torch.from_numpy(s)[None]).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            total += float(-lp[torch.arange(p - 1, n - 1), torch.from_numpy(s[p:])].sum())
            count += n - p
    assert abs(hf - loss) < 1e-5, ("transformers' loss differs", hf, loss)
    assert abs(total / count - loss) < 1e-5, ("the unpadded per-sequence loss differs", total / count, loss)


def train_one(name, seed):
    torch = torch_or_die()
    import peft
    import transformers
    out_dir = os.path.join(FIX, name, "lora")
    if not os.path.exists(os.path.join(out_dir, "adapter_model.safetensors")):
        sys.exit("make_fixtures.py train: run the 'tiny' and 'lora' targets first (needs %s)" % out_dir)
    torch.manual_seed(seed)
    base = load_base(torch, name)
    model = peft.PeftModel.from_pretrained(base, out_dir, is_trainable=True)
    model.train()
    assert model.peft_config["default"].lora_dropout == 0.0, name
    assert getattr(base.config, "attention_dropout", 0.0) == 0.0, name
    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [peft_name(n) for n, _ in lora]
    assert all(".lora_A." in n or ".lora_B." in n for n in names), ("non-LoRA trainable parameter", names)
    want = 2 * len(TARGETS) * base.config.num_hidden_layers
    assert len(lora) == want, (name, "expected %d LoRA tensors" % want, len(lora))
    from safetensors.numpy import load_file

    assert sorted(names) == sorted(load_file(os.path.join(out_dir, "adapter_model.safetensors"))), name

    seqs = make_batch(seed + 700, base.config.vocab_size)
    ids, mask, labels = padded(torch, seqs)
    params = [p for _, p in lora]
    opt = torch.optim.AdamW(params, lr=CONFIG["learning_rate"], betas=(CONFIG["adam_beta1"], CONFIG["adam_beta2"]),
                            eps=CONFIG["adam_epsilon"], weight_decay=CONFIG["weight_decay"],
                            foreach=False, fused=False)
    sched = transformers.get_linear_schedule_with_warmup(opt, CONFIG["warmup_steps"], STEPS)

    exp = {}
    losses, norms, lrs = [], [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = sft_loss(torch, model, ids, mask, labels)
        loss.backward()
        if step == 0:
            check_loss(torch, model, seqs, ids, mask, labels, loss.item())
            for n, p in zip(names, params):
                g = p.grad.detach().numpy().astype(np.float32)
                assert np.abs(g).max() > 0, (name, "zero gradient", n)
                exp["grad." + n] = g.copy()
        losses.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, CONFIG["max_grad_norm"])))
        opt.step()
        sched.step()
    with torch.no_grad():
        after = float(sft_loss(torch, model, ids, mask, labels))
    for n, p in zip(names, params):
        exp["param." + n] = p.detach().numpy().astype(np.float32).copy()

    flat = np.concatenate(seqs)
    flat_labels = np.concatenate([np.where(np.arange(n) >= p, s, -100) for s, (n, p) in zip(seqs, SEQS)])
    exp.update({
        "input_ids": flat.astype(np.int64),
        "lengths": np.array([n for n, _ in SEQS], dtype=np.int64),
        "prompt_lengths": np.array([p for _, p in SEQS], dtype=np.int64),
        "labels": flat_labels.astype(np.int64),
        "loss": np.array([losses[0]], dtype=np.float32),
        "loss_per_step": np.array(losses, dtype=np.float32),
        "grad_norm": np.array(norms, dtype=np.float32),
        "lr": np.array(lrs, dtype=np.float32),
        "loss_after": np.array([after], dtype=np.float32),
    })
    cfg = model.peft_config["default"]
    meta = {
        "producer": "scripts/fixtures_train.py (make_fixtures.py train)",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "compute": "float32 eager CPU, train mode, deterministic algorithms",
        "adapter": "tests/fixtures/%s/lora (r %d, alpha %s, use_rslora %s)" % (name, cfg.r, cfg.lora_alpha,
                                                                              cfg.use_rslora),
        "config": json.dumps(CONFIG),
        "loss_formula": LOSS_FORMULA,
        "schedule": "transformers.get_linear_schedule_with_warmup(opt, 1, 3), stepped after opt.step(); lr "
                    "used per step in 'lr'",
        "optimizer": "torch.optim.AdamW(foreach=False, fused=False), weight decay on every LoRA tensor; "
                     "clip_grad_norm_(max_norm=1.0) before each step; 'grad_norm' is its return value",
        "keys": "grad.NAME: gradients of 'loss' at the committed adapter; param.NAME: LoRA tensors after step 3; "
                "NAME as in adapter_model.safetensors; input_ids/labels flat (no padding), split by 'lengths'",
    }
    path = os.path.join(out_dir, "train-expected.safetensors")
    save_stable(exp, path, meta)
    nz = {t: all(np.abs(exp["grad." + n]).max() > 0 for n in names if ("." + t + ".") in n) for t in TARGETS}
    log("%s/lora/train-expected.safetensors: %d bytes; loss per step %s, after %.6f; grad norm %s; lr %s; "
        "non-zero A and B gradients for %s" % (name, os.path.getsize(path), ["%.6f" % x for x in losses], after,
                                               ["%.4f" % x for x in norms], lrs,
                                               ",".join(t for t in TARGETS if nz[t])))
    assert all(nz.values()), (name, nz)


def make_train():
    for name, (_, _, _, _, seed) in TINY.items():
        train_one(name, seed)


if __name__ == "__main__":
    sys.exit(__doc__)
