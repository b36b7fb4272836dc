#!/usr/bin/env python3
"""The peer for `babelrl bench`: the same model under PyTorch (transformers) with the same measurements
on the same shapes, so the two tables compare like with like:

  * prefill: one prompt of --prompt-tokens per sequence, logits of the last position only
    (`logits_to_keep=1`, as babelrl computes only the rows it samples from);
  * decode: --decode-tokens greedy steps with a KV cache, at each batch size of --batch;
  * teacher-forced log-probs of a GRPO-sized group (one prompt, eight completions as long as the prompt),
    all positions' logits, one pass over the eight (prompt + completion) rows;
  * GEMM GFLOP/s on the model's matrix shapes (torch.matmul of activations by the transposed weight);
  * with --train (or --train-only, which skips everything else): one SFT step of a PEFT LoRA (r 16,
    alpha 32, dropout 0, on q/k/v/o/gate/up/down) on --train-batch sequences of --train-tokens seeded
    random token ids, loss = mean cross-entropy over every predicted token (B × (T − 1) of them); a step is
    forward + backward + torch.optim.AdamW step (lr 1e-4, torch's defaults otherwise) + zero_grad. Three
    kinds of pass are timed: the forward alone (no_grad, same batch, logits + the same loss), the step,
    and the step with gradient checkpointing (activation_checkpointing_enable, or
    gradient_checkpointing_enable before transformers 5; non-reentrant, so no enable_input_require_grads
    is needed; checked by counting the runs of layer 0's MLP forward: 2 per step instead of 1). After one
    warm-up of each, they take turns for --train-steps rounds (so a load that changes during the run hits
    all three alike) and the mean of each is reported: tokens/s counting B × T tokens per pass, the ratio
    to the forward ("step ÷ forward" is what issue 7 asks about), and process CPU seconds (all threads;
    on a shared CPU they include torch's threads waiting for each other, so they are no steadier).
    Memory is that of each kind's warm-up step, with a fresh AdamW (its moments included): on the CPU
    process RSS (Linux VmHWM, reset through /proc/self/clear_refs after glibc's malloc_trim), the peak and
    the peak minus the RSS before the step (what training adds to the loaded model); on CUDA
    torch.cuda.max_memory_allocated and its rise over the step.
  * with --grpo (after everything else; --grpo-only runs nothing else): TRL's GRPOTrainer on the same model
    with a PEFT LoRA (the SFT row's r 16, alpha 32, all seven projections; the training row, if it ran,
    has unloaded its own), one plain-text prompt of exactly --grpo-prompt-tokens tokens (a fixed sentence
    repeated and cut), --grpo-generations sampled completions (temperature 1) of exactly
    --grpo-completion-tokens new tokens (min_new_tokens: every EOS id is suppressed until then; checked
    through TRL's completion-length metrics), loss dapo, beta --grpo-beta, reward = share of distinct token
    ids in a completion, AdamW lr 1e-4, no gradient checkpointing, float32 on the CPU (TRL's bf16 default
    off). 1 warm-up + --grpo-steps timed optimizer steps, each timed from the trainer's on_step_begin to
    on_step_end, and split by wrapping the trainer's methods: rollout = _generate (tokenize the prompt,
    model.generate with a KV cache, decode), reward = _calculate_rewards, reference = the no-grad log-prob
    pass with the adapter off while scoring (only when beta > 0; no old-policy pass is made, as generation
    is aligned with the optimizer step), rest of scoring = _prepare_inputs minus those three (advantages,
    padding, metrics), update = the step minus _prepare_inputs (policy forward with log-probs, loss,
    backward, gradient clipping, AdamW, zero_grad). new tokens/s = generations × completion tokens per
    step ÷ s/step; memory = peak process RSS over the whole train() (VmHWM reset before it), on CUDA
    torch.cuda.max_memory_allocated.

  * with --reward, --dpo, --best-of-n (after everything else; their --*-only flags go together and skip the
    rest): TRL's RewardTrainer on AutoModelForSequenceClassification of --reward-base (default: --model when it
    is a folder) and TRL's DPOTrainer on the model, both with the PEFT LoRA above, on seeded random token pairs
    given pre-tokenized, 1 warm-up + N timed optimizer steps, tokens/s over both sides of every pair, peak
    memory over train(); DPO's reference is the adapter-off pass inside every step (no ref_model, no
    precompute), timed on its own; best-of-n: transformers generate of prompts × samples completions of a fixed
    length in one batch, then one forward of the reward model (the base + a fresh LoRA and score head),
    completions scored per second (see bench_reward, bench_dpo, bench_best_of_n).

Options mirror `babelrl bench` (--model, --prompt-tokens, --decode-tokens, --batch, --no-gemm,
--gemm-only, --train, --train-only, --train-batch, --train-tokens, --train-steps, --grpo, --grpo-only,
--grpo-prompt-tokens, --grpo-completion-tokens, --grpo-generations, --grpo-steps, --grpo-beta, --reward[-only],
--reward-base, --reward-pairs, --reward-tokens, --reward-steps, --dpo[-only], --dpo-pairs, --dpo-prompt-tokens,
--dpo-completion-tokens, --dpo-steps, --dpo-beta, --best-of-n[-only], --best-of-n-prompts, --best-of-n-samples,
--best-of-n-tokens); babelrl-only options
(--profile) are accepted and ignored, so scripts/bench.sh can pass the same arguments to both sides.
--device cuda runs the CUDA peer (scripts/bench_gpu.sh), in --dtype float16 by default there; on the CPU
the default is float32 with eager attention.

--make-random-model CONFIG.json OUT_DIR writes a model of that config with seeded random weights (float16
safetensors), for benchmarking where the real weights cannot travel: speed does not depend on the values.

Run with the fixtures venv (torch is not installed in CI):
    /root/.venvs/fixtures/bin/python scripts/bench_pytorch.py [--model PATH.gguf|DIR] [--batch 1,8]
"""
import argparse
import json
import os
import time
import warnings

# transformers 5 renames `past_key_values` (still accepted, with a FutureWarning per call); the older
# name keeps the script working with the transformers a GPU machine happens to have.
warnings.filterwarnings("ignore", category=FutureWarning)


def load_model(path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    attn = "eager" if device == "cpu" else "sdpa"
    if os.path.isdir(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype, attn_implementation=attn)
    return model.to(device).eval(), attn


def make_random_model(config_path, out_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(config_path) as f:
        raw = json.load(f)
    cfg = AutoConfig.for_model(**raw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    print("random %s model (%s) written to %s" % (raw.get("model_type"), os.path.basename(config_path), out_dir))


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_model(model, device, vocab, batch, prompt, steps, gen):
    import torch

    ids = torch.randint(0, vocab, (batch, prompt), generator=gen).to(device)
    with torch.no_grad():
        model(ids, logits_to_keep=1)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        prefill = batch * prompt / (time.perf_counter() - t0)
        past = out.past_key_values
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        decode = batch * steps / (time.perf_counter() - t0)
    return prefill, decode


def bench_logprobs(model, device, vocab, prompt, gen):
    """Eight (prompt + completion) rows in one pass; log-probs of every completion token."""
    import torch

    question = torch.randint(0, vocab, (1, prompt), generator=gen)
    rows = torch.cat([question.repeat(8, 1), torch.randint(0, vocab, (8, prompt), generator=gen)], 1).to(device)
    with torch.no_grad():
        for timed in (False, True):
            sync(device)
            t0 = time.perf_counter()
            logits = model(rows).logits[:, prompt - 1:-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, rows[:, prompt:, None])
            sync(device)
            secs = time.perf_counter() - t0
    assert lp.shape == (8, prompt, 1)
    return rows.numel() / secs


def bench_gemm(cfg, device, dtype, figures):
    import torch

    hidden = cfg.hidden_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv = cfg.num_key_value_heads
    shapes = [
        ("qkv", (heads + 2 * kv) * head_dim, hidden),
        ("o_proj", hidden, heads * head_dim),
        ("gate_up", 2 * cfg.intermediate_size, hidden),
        ("down", hidden, cfg.intermediate_size),
        ("lm_head", cfg.vocab_size, hidden),
    ]
    print("\n| GEMM (N×K) | T=1 GFLOP/s | T=8 GFLOP/s | T=128 GFLOP/s |")
    print("|---|---|---|---|")
    g = torch.Generator().manual_seed(2)
    for name, n, k in shapes:
        w = (torch.rand(n, k, generator=g) * 0.2 - 0.1).to(device=device, dtype=dtype)
        row = "| %s (%d×%d) |" % (name, n, k)
        for t in (1, 8, 128):
            x = (torch.rand(t, k, generator=g) * 2 - 1).to(device=device, dtype=dtype)
            with torch.no_grad():
                x @ w.T
                sync(device)
                t0 = time.perf_counter()
                x @ w.T
                sync(device)
                once = time.perf_counter() - t0
                reps = max(1, min(200, int(0.3 / max(once, 1e-9))))
                t0 = time.perf_counter()
                for _ in range(reps):
                    x @ w.T
                sync(device)
                secs = time.perf_counter() - t0
            gflops = 2.0 * t * n * k * reps / secs / 1e9
            row += " %.2f |" % gflops
            figures["GEMM GFLOP/s, %s (%d×%d), T=%d" % (name, n, k, t)] = gflops
        print(row)


TRAIN_RANK, TRAIN_ALPHA = 16, 32
TRAIN_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIB = float(1 << 20)


def rss_reset():
    """Give freed heap back to the OS (glibc malloc_trim, so what an earlier phase freed but the allocator
    kept does not count as this phase's), then reset the process' peak RSS (Linux >= 4.0: writing 5 to
    clear_refs resets VmHWM to the current RSS). Returns False when the kernel does not allow the reset (the
    peak then covers everything since the process started)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS before the phase may then include memory an earlier phase freed
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_now_and_peak():
    """(VmRSS, VmHWM) in bytes from /proc/self/status; (None, ru_maxrss) where /proc is missing."""
    import resource

    try:
        with open("/proc/self/status") as f:
            kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS", "VmHWM"))}
        return kb["VmRSS"] * 1024, kb["VmHWM"] * 1024
    except (OSError, KeyError, ValueError):
        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryPhase:
    """Peak memory of one phase: process RSS on the CPU, torch's allocator on CUDA."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.reset = True
        else:
            self.reset = rss_reset()
            self.before = rss_now_and_peak()[0]
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = rss_now_and_peak()[1]
        self.added = self.peak - self.before if self.before is not None and self.reset else None
        return False


def bench_train(model, device, vocab, batch, tokens, steps, gen, figures):
    """The SFT step of the module docstring, without and with gradient checkpointing; prints the table."""
    import torch
    import peft

    ids = torch.randint(0, vocab, (batch, tokens), generator=gen).to(device)
    n_tok = batch * tokens
    cfg = peft.LoraConfig(r=TRAIN_RANK, lora_alpha=TRAIN_ALPHA, lora_dropout=0.0, target_modules=TRAIN_TARGETS,
                          bias="none", task_type="CAUSAL_LM")
    # get_peft_model injects the LoRA layers into `model` in place; unload() at the end takes them out again.
    pm = peft.get_peft_model(model, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    want = 2 * len(TRAIN_TARGETS) * model.config.num_hidden_layers
    assert len(params) == want, ("expected %d LoRA tensors" % want, len(params))
    opt = None  # made inside each memory phase, so that phase's memory holds the AdamW moments
    # Count the runs of layer 0's MLP forward: once per step, twice when backward recomputes the layer. (A
    # forward hook would not do: torch's non-reentrant checkpoint runs no hooks when it recomputes.)
    calls = [0]
    mlp = pm.base_model.model.model.layers[0].mlp
    mlp_forward = mlp.forward

    def counted(*a, **k):
        calls[0] += 1
        return mlp_forward(*a, **k)

    mlp.forward = counted
    base = pm.base_model.model

    def checkpointing(on):
        if on and hasattr(base, "activation_checkpointing_enable"):  # transformers 5; the old name warns there
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif on:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()

    def loss_of():
        logits = pm(input_ids=ids, use_cache=False).logits.float()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))

    def forward():
        with torch.no_grad():
            return loss_of().item()

    def step():
        loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    # Warm-up: one step of each kind, each inside its memory phase with a fresh optimizer, then a forward.
    with MemoryPhase(device) as plain_mem:
        opt = torch.optim.AdamW(params, lr=1e-4)
        step()
    opt = None
    checkpointing(True)
    with MemoryPhase(device) as ckpt_mem:
        opt = torch.optim.AdamW(params, lr=1e-4)
        step()
    forward()
    # Timed: the three kinds take turns, --train-steps rounds, so a machine whose load changes during the
    # run (another job on the same cores) slows all three alike; the mean per kind is reported, wall clock
    # and process CPU time (all threads).
    kinds = (("forward", forward, False), ("step", step, False), ("ckpt", step, True))
    wall = {k: 0.0 for k, _, _ in kinds}
    cpu = dict(wall)
    runs = {k: 0 for k, _, _ in kinds}
    for _ in range(steps):
        for k, fn, ckpt in kinds:
            checkpointing(ckpt)
            sync(device)
            calls[0] = 0
            w0, c0 = time.perf_counter(), time.process_time()
            value = fn()
            sync(device)
            wall[k] += (time.perf_counter() - w0) / steps
            cpu[k] += (time.process_time() - c0) / steps
            runs[k] = calls[0]
            assert value == value, (k, "loss is NaN")
    checkpointing(False)
    opt = None
    mlp.forward = mlp_forward
    pm.unload()  # the LoRA layers out of `model` again, for the GRPO row after this one
    assert runs == {"forward": 1, "step": 1, "ckpt": 2}, ("runs of layer 0's MLP per pass: checkpointing not as "
                                                         "meant", runs)
    fwd_secs, plain_secs, ckpt_secs = wall["forward"], wall["step"], wall["ckpt"]

    kind = "CUDA allocated" if device == "cuda" else "process RSS"
    note = "" if plain_mem.reset else " (peak since the process started: this kernel cannot reset it)"
    print("\n| SFT step, LoRA r=%d on 7 projections (%d parameters), %d × %d tokens | tokens/s | "
          "time ÷ forward | process CPU s per pass (÷ forward) | peak %s (MiB)%s | added by the step (MiB) |"
          % (TRAIN_RANK, n_params, batch, tokens, kind, note))
    print("|---|---|---|---|---|---|")
    fmt = lambda b: "—" if b is None else "%.0f" % (b / MIB)
    print("| forward only (no_grad, logits + loss) | %.1f | 1.00 | %.1f (1.00) | — | — |"
          % (n_tok / fwd_secs, cpu["forward"]))
    print("| training step (forward + backward + AdamW) | %.1f | %.2f | %.1f (%.2f) | %s | %s |"
          % (n_tok / plain_secs, plain_secs / fwd_secs, cpu["step"], cpu["step"] / cpu["forward"],
             fmt(plain_mem.peak), fmt(plain_mem.added)))
    print("| training step, gradient checkpointing | %.1f | %.2f | %.1f (%.2f) | %s | %s |"
          % (n_tok / ckpt_secs, ckpt_secs / fwd_secs, cpu["ckpt"], cpu["ckpt"] / cpu["forward"],
             fmt(ckpt_mem.peak), fmt(ckpt_mem.added)))
    figures["train_forward_tokens_per_s"] = n_tok / fwd_secs
    figures["train_tokens_per_s"] = n_tok / plain_secs
    figures["train_ckpt_tokens_per_s"] = n_tok / ckpt_secs
    figures["train_step_over_forward"] = plain_secs / fwd_secs
    figures["train_ckpt_step_over_forward"] = ckpt_secs / fwd_secs
    figures["train_forward_cpu_seconds"] = cpu["forward"]
    figures["train_cpu_seconds"] = cpu["step"]
    figures["train_ckpt_cpu_seconds"] = cpu["ckpt"]
    prefix = "train_peak_cuda_allocated" if device == "cuda" else "train_peak_rss"
    figures[prefix + "_bytes"] = plain_mem.peak
    figures[prefix.replace("train_", "train_ckpt_") + "_bytes"] = ckpt_mem.peak
    if plain_mem.added is not None:
        figures[prefix.replace("_peak_", "_added_") + "_bytes"] = plain_mem.added
        figures[prefix.replace("train_peak_", "train_ckpt_added_") + "_bytes"] = ckpt_mem.added
    return {"train": "PEFT LoRA r=%d alpha=%d on %s, %d trainable parameters; %d × %d random tokens; mean CE "
                     "over all predicted tokens; step = forward + backward + AdamW + zero_grad; forward, step "
                     "and checkpointed step in turn, mean of %d rounds after 1 warm-up each; memory = %s of "
                     "the warm-up step (fresh AdamW)" % (TRAIN_RANK, TRAIN_ALPHA, ",".join(TRAIN_TARGETS),
                                                            n_params, batch, tokens, steps, kind + note)}


GRPO_TEXT = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the green field "
             "behind the old stone house. ")


def grpo_prompt(tok, tokens):
    """A plain-text prompt (no chat template) that the tokenizer, called as TRL calls it, turns into exactly
    `tokens` ids: the fixed sentence repeated, its tokenization cut to `tokens` and decoded."""
    ids = tok(text=[GRPO_TEXT * (tokens // 8 + 2)])["input_ids"][0][:tokens]
    text = tok.decode(ids, skip_special_tokens=True)
    got = len(tok(text=[text])["input_ids"][0])
    assert got == tokens, ("GRPO prompt: cut to %d tokens, the decoded text re-tokenizes to %d" % (tokens, got))
    return text


def grpo_reward(completion_ids, **kwargs):
    """Cheap and deterministic: the share of distinct token ids in each completion (varies within a group,
    so the advantages and the gradient are not zero)."""
    return [len(set(ids)) / max(len(ids), 1) for ids in completion_ids]


def bench_grpo(model, device, model_path, prompt_tokens, completion_tokens, generations, steps, beta, figures):
    """One GRPO step of TRL's GRPOTrainer per optimizer step (see the module docstring); prints the table."""
    import shutil
    import tempfile
    import peft
    import trl
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    if os.path.isdir(model_path):
        tok = AutoTokenizer.from_pretrained(model_path)
    else:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path))
    assert tok.eos_token_id is not None, ("GRPO row: %s has no end-of-sequence token, which TRL's GRPOTrainer "
                                          "needs (it passes the EOS ids to generate)" % model_path)
    if tok.pad_token_id is None:  # TRL left-pads the prompts (one here, so never used) with it
        tok.pad_token = tok.eos_token
    prompt = grpo_prompt(tok, prompt_tokens)
    # transformers' GGUF loader dequantizes every tensor to `dtype` but leaves the model marked as quantized
    # (GGUF), which Trainer refuses to train; the weights are plain tensors, so the quantizer's own
    # remove_quantization_config takes the mark off.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = str(quantizer.quantization_config.quant_method)
        assert method.lower().endswith("gguf"), ("GRPO row: a model quantized with %s cannot be trained" % method)
        assert all(p.is_floating_point() for p in model.parameters()), "GRPO row: GGUF weights left quantized"
        quantizer.remove_quantization_config(model)
    lora = peft.LoraConfig(r=TRAIN_RANK, lora_alpha=TRAIN_ALPHA, lora_dropout=0.0, target_modules=TRAIN_TARGETS,
                           bias="none", task_type="CAUSAL_LM")
    out_dir = tempfile.mkdtemp(prefix="bench-grpo-")
    args = trl.GRPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=device == "cpu", bf16=False, fp16=False, gradient_checkpointing=False, seed=0,
        max_steps=1 + steps, per_device_train_batch_size=generations, gradient_accumulation_steps=1,
        num_generations=generations, max_completion_length=completion_tokens,
        # Every completion exactly max_completion_length tokens: the end-of-sequence ids (all of TRL's
        # eos_token_ids, which it passes to generate) are suppressed until then.
        generation_kwargs={"min_new_tokens": completion_tokens},
        loss_type="dapo", beta=beta, learning_rate=1e-4)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=grpo_reward, args=args,
                              train_dataset=Dataset.from_list([{"prompt": prompt}]), processing_class=tok,
                              peft_config=lora)
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    # Time the trainer's own methods (wrapped on the instance: TRL calls them through self) and each optimizer
    # step, from the callbacks' on_step_begin (before generation) to on_step_end (after AdamW and zero_grad).
    parts = {"step": [], "prepare": [], "rollout": [], "reward": [], "reference": []}
    acc = {k: 0.0 for k in parts}
    logps_calls = [0]
    scoring = [False]

    def timed(name, fn, when=lambda: True):
        def wrapped(*a, **k):
            if not when():
                return fn(*a, **k)
            sync(device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync(device)
            acc[name] += time.perf_counter() - t0
            return out
        return wrapped

    score = trainer._generate_and_score_completions

    def scored(*a, **k):
        scoring[0] = True
        try:
            return score(*a, **k)
        finally:
            scoring[0] = False

    logps = trainer._get_per_token_logps_and_entropies

    def counted_logps(*a, **k):
        logps_calls[0] += scoring[0]
        return logps(*a, **k)

    trainer._prepare_inputs = timed("prepare", trainer._prepare_inputs)
    trainer._generate_and_score_completions = scored
    trainer._generate = timed("rollout", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed("reference", counted_logps, lambda: scoring[0])

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            for key in acc:
                acc[key] = 0.0
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            acc["step"] = time.perf_counter() - self.t0
            for key in parts:
                parts[key].append(acc[key])

    trainer.add_callback(StepClock())
    with MemoryPhase(device) as mem:
        trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)  # save_strategy "no": nothing in it is needed
    hist = trainer.state.log_history
    lengths = [(h["completions/min_length"], h["completions/max_length"]) for h in hist
               if "completions/min_length" in h]
    assert lengths == [(completion_tokens, completion_tokens)] * (1 + steps), (
        "every completion should have exactly %d tokens" % completion_tokens, lengths)
    assert all(len(v) == 1 + steps for v in parts.values()), ("optimizer steps timed", parts)
    # Reference log-probs are the only log-prob pass made while scoring (old log-probs are skipped: one
    # generation per optimizer step, num_iterations 1), once per step when beta ≠ 0.
    assert logps_calls[0] == (1 + steps if beta else 0), ("log-prob passes while scoring", logps_calls[0])
    mean = {k: sum(v[1:]) / steps for k, v in parts.items()}  # the first step is the warm-up
    other = mean["prepare"] - mean["rollout"] - mean["reward"] - mean["reference"]
    update = mean["step"] - mean["prepare"]
    new_tokens = generations * completion_tokens
    kind = "CUDA allocated" if device == "cuda" else "process RSS"
    note = "" if mem.reset else " (since the process started: this kernel cannot reset it)"
    print("\n| GRPO step, TRL %s GRPOTrainer, LoRA r=%d (%d parameters), 1 prompt of %d tokens × %d completions "
          "of %d tokens, loss dapo, beta %g | s/step | rollout s | reward s | reference s | rest of scoring s | "
          "update s | new tokens/s | peak %s (MiB)%s |"
          % (trl.__version__, TRAIN_RANK, n_params, prompt_tokens, generations, completion_tokens, beta, kind, note))
    print("|---|---|---|---|---|---|---|---|---|")
    print("| mean of %d steps after 1 warm-up | %.2f | %.2f | %.4f | %.2f | %.3f | %.2f | %.1f | %.0f |"
          % (steps, mean["step"], mean["rollout"], mean["reward"], mean["reference"], other, update,
             new_tokens / mean["step"], mem.peak / MIB))
    figures["grpo_step_seconds"] = mean["step"]
    figures["grpo_rollout_seconds"] = mean["rollout"]
    figures["grpo_reward_seconds"] = mean["reward"]
    figures["grpo_reference_seconds"] = mean["reference"]
    figures["grpo_update_seconds"] = update
    figures["grpo_tokens_per_s"] = new_tokens / mean["step"]
    figures["grpo_peak_cuda_allocated_bytes" if device == "cuda" else "grpo_peak_rss_bytes"] = mem.peak
    return {"grpo": "TRL %s GRPOTrainer (transformers %s, peft %s), LoRA r=%d alpha=%d on %s, %d trainable "
                    "parameters; 1 prompt of %d tokens, %d completions of exactly %d new tokens (EOS suppressed "
                    "until then), temperature 1, loss dapo, beta %g, reward = share of distinct ids, AdamW lr 1e-4, "
                    "no gradient checkpointing, %s; mean of %d steps after 1 warm-up; rollout = _generate, reward = "
                    "_calculate_rewards, reference = the adapter-off log-prob pass, update = step - "
                    "_prepare_inputs; memory = peak %s over the whole train()"
                    % (trl.__version__, transformers.__version__, peft.__version__, TRAIN_RANK, TRAIN_ALPHA,
                       ",".join(TRAIN_TARGETS), n_params, prompt_tokens, generations, completion_tokens, beta,
                       str(model.dtype).replace("torch.", ""), steps, kind + note)}


def unmark_gguf(model, row):
    """transformers' GGUF loader dequantizes every tensor but leaves the model marked as quantized (GGUF),
    which Trainer refuses to train; the weights are plain tensors, so the quantizer's own
    remove_quantization_config takes the mark off."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = str(quantizer.quantization_config.quant_method)
        assert method.lower().endswith("gguf"), ("%s row: a model quantized with %s cannot be trained" % (row, method))
        assert all(p.is_floating_point() for p in model.parameters()), "%s row: GGUF weights left quantized" % row
        quantizer.remove_quantization_config(model)


def load_tokenizer(model_path):
    from transformers import AutoTokenizer

    if os.path.isdir(model_path):
        return AutoTokenizer.from_pretrained(model_path)
    return AutoTokenizer.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path))


def load_reward_body(base, device, dtype):
    """The reward model of the --reward and --best-of-n rows: AutoModelForSequenceClassification (num_labels 1,
    a fresh score head) of the --reward-base folder, and its tokenizer (pad = eos when it has none, as TRL sets)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    attn = "eager" if device == "cpu" else "sdpa"
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype,
                                                               attn_implementation=attn)
    model.config.pad_token_id = tok.pad_token_id
    return model.to(device), tok


def random_ids(gen, vocab, n, avoid):
    """n seeded random ids in [0, vocab), none of them in `avoid` (the pad id would move the score position)."""
    import torch

    ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
    return [i if i not in avoid else (i + 1) % vocab for i in ids]


class StepClock:
    """Wall time of each optimizer step, from the callbacks' on_step_begin to on_step_end."""

    def __init__(self, device):
        from transformers import TrainerCallback

        clock = self
        self.secs = []

        class Callback(TrainerCallback):
            def on_step_begin(self, *a, **k):
                sync(device)
                clock.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                sync(device)
                clock.secs.append(time.perf_counter() - clock.t0)

        self.callback = Callback()


def report_pref(key, title, secs, steps, tokens, mem, device, figures, extra=""):
    s_step = sum(secs[1:]) / steps  # the first step is the warm-up
    kind = "CUDA allocated" if device == "cuda" else "process RSS"
    note = "" if mem.reset else " (since the process started: this kernel cannot reset it)"
    print("\n| %s | s/step | tokens/s |%s peak %s (MiB)%s |" % (title, " reference s |" if extra else "", kind, note))
    print("|---|---|---|%s---|" % ("---|" if extra else ""))
    print("| mean of %d steps after 1 warm-up | %.2f | %.1f |%s %.0f |"
          % (steps, s_step, tokens / s_step, extra, mem.peak / MIB))
    figures["%s_step_seconds" % key] = s_step
    figures["%s_tokens_per_s" % key] = tokens / s_step
    figures["%s_peak_%s_bytes" % (key, "cuda_allocated" if device == "cuda" else "rss")] = mem.peak
    return kind + note


def bench_reward(base, device, dtype, pairs, tokens, steps, figures):
    """TRL's RewardTrainer (Bradley–Terry) + a PEFT LoRA on AutoModelForSequenceClassification of --reward-base:
    --reward-pairs pairs of --reward-tokens seeded random ids per side, given pre-tokenized (chosen_ids /
    rejected_ids, so TRL adds no EOS and pads nothing), one micro-batch of all pairs per optimizer step, AdamW lr
    1e-4, float32, no gradient checkpointing; 1 warm-up + --reward-steps timed steps (on_step_begin to
    on_step_end); tokens/s counts both sides; memory = peak over the whole train()."""
    import shutil
    import tempfile
    import peft
    import torch
    import trl
    from datasets import Dataset

    model, tok = load_reward_body(base, device, dtype)
    gen = torch.Generator().manual_seed(13)
    vocab = model.config.vocab_size
    avoid = {tok.pad_token_id}
    rows = [{"chosen_ids": random_ids(gen, vocab, tokens, avoid), "rejected_ids": random_ids(gen, vocab, tokens, avoid)}
            for _ in range(pairs)]
    lora = peft.LoraConfig(r=TRAIN_RANK, lora_alpha=TRAIN_ALPHA, lora_dropout=0.0, target_modules=TRAIN_TARGETS,
                           bias="none", task_type="SEQ_CLS")
    out_dir = tempfile.mkdtemp(prefix="bench-reward-")
    args = trl.RewardConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=device == "cpu", bf16=False, fp16=False, gradient_checkpointing=False, seed=0,
        max_steps=1 + steps, per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
        max_length=None, learning_rate=1e-4)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                peft_config=lora)
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    clock = StepClock(device)
    trainer.add_callback(clock.callback)
    with MemoryPhase(device) as mem:
        trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)
    assert len(clock.secs) == 1 + steps, ("optimizer steps timed", clock.secs)
    title = ("Reward-model step, TRL %s RewardTrainer, LoRA r=%d + score head (%d trainable parameters), %d pairs × "
             "2 × %d tokens" % (trl.__version__, TRAIN_RANK, n_params, pairs, tokens))
    kind = report_pref("reward", title, clock.secs, steps, pairs * 2 * tokens, mem, device, figures)
    del trainer, model
    return {"reward": "%s; random ids given as chosen_ids/rejected_ids; AdamW lr 1e-4; %s; mean of %d steps after 1 "
                      "warm-up; memory = peak %s over the whole train()"
                      % (title, str(dtype).replace("torch.", ""), steps, kind)}


def bench_dpo(model, model_path, device, dtype, pairs, prompt_tokens, completion_tokens, steps, beta, figures):
    """TRL's DPOTrainer (sigmoid loss, beta --dpo-beta) + a PEFT LoRA on the causal model, no ref_model (the
    reference pass runs with the adapter off, TRL's default with PEFT), no precompute_ref_log_probs: --dpo-pairs
    pairs of --dpo-prompt-tokens prompt ids and --dpo-completion-tokens ids per completion, seeded random, given
    pre-tokenized (prompt_ids / chosen_ids / rejected_ids: the dataset preparation, which only tokenizes text, is
    skipped), one micro-batch of all pairs per step, AdamW lr 1e-4, float32, no gradient checkpointing, max_length
    None; 1 warm-up + --dpo-steps timed steps; reference s = time in compute_ref_log_probs; tokens/s counts prompt +
    completion of both sides; memory = peak over the whole train()."""
    import shutil
    import tempfile
    import peft
    import torch
    import contextlib
    import trl
    import trl.trainer.dpo_trainer as dpo_module
    from datasets import Dataset

    if model is None:  # the GRPO row left its LoRA in the loaded model
        model, _ = load_model(model_path, device, dtype)
    unmark_gguf(model, "DPO")
    tok = load_tokenizer(model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    gen = torch.Generator().manual_seed(17)
    vocab = model.config.vocab_size
    rows = [{"prompt_ids": random_ids(gen, vocab, prompt_tokens, set()),
             "chosen_ids": random_ids(gen, vocab, completion_tokens, set()),
             "rejected_ids": random_ids(gen, vocab, completion_tokens, set())} for _ in range(pairs)]
    lora = peft.LoraConfig(r=TRAIN_RANK, lora_alpha=TRAIN_ALPHA, lora_dropout=0.0, target_modules=TRAIN_TARGETS,
                           bias="none", task_type="CAUSAL_LM")

    class PreTokenized(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):
            return dataset

    out_dir = tempfile.mkdtemp(prefix="bench-dpo-")
    args = trl.DPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=device == "cpu", bf16=False, fp16=False, gradient_checkpointing=False, seed=0,
        max_steps=1 + steps, per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
        max_length=None, beta=beta, loss_type=["sigmoid"], precompute_ref_log_probs=False, learning_rate=1e-4)
    trainer = PreTokenized(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                           peft_config=lora)
    assert trainer.ref_model is None, "DPO row: expected the PEFT reference (adapter off), not a reference copy"
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    # The reference forward runs inside the loss, under the module's use_adapter context (adapter off): time
    # that context.
    ref = []
    use_adapter = dpo_module.use_adapter

    @contextlib.contextmanager
    def timed_use_adapter(*a, **k):
        with use_adapter(*a, **k):
            sync(device)
            t0 = time.perf_counter()
            yield
            sync(device)
            ref.append(time.perf_counter() - t0)

    dpo_module.use_adapter = timed_use_adapter
    clock = StepClock(device)
    trainer.add_callback(clock.callback)
    try:
        with MemoryPhase(device) as mem:
            trainer.train()
    finally:
        dpo_module.use_adapter = use_adapter
    shutil.rmtree(out_dir, ignore_errors=True)
    assert len(clock.secs) == 1 + steps, ("optimizer steps timed", clock.secs)
    assert len(ref) == 1 + steps, ("reference passes: one per step", len(ref))
    ref_s = sum(ref[1:]) / steps
    title = ("DPO step, TRL %s DPOTrainer, sigmoid, beta %g, LoRA r=%d (%d trainable parameters), reference = "
             "adapter off, %d pairs × (%d prompt + %d completion tokens) × 2 sides"
             % (trl.__version__, beta, TRAIN_RANK, n_params, pairs, prompt_tokens, completion_tokens))
    kind = report_pref("dpo", title, clock.secs, steps, pairs * 2 * (prompt_tokens + completion_tokens), mem, device,
                       figures, extra=" %.2f |" % ref_s)
    figures["dpo_reference_seconds"] = ref_s
    del trainer, model
    return {"dpo": "%s; random ids given as prompt_ids/chosen_ids/rejected_ids; AdamW lr 1e-4; %s; mean of %d steps "
                   "after 1 warm-up; memory = peak %s over the whole train()"
                   % (title, str(dtype).replace("torch.", ""), steps, kind)}


BON_TEXT = "Write one sentence about the weather in the mountains, numbered"


def bench_best_of_n(model, model_path, base, device, dtype, prompts, samples, tokens, figures):
    """Best-of-n with a reward-model judge: transformers' generate (do_sample, temperature 1, KV cache) of
    --best-of-n-samples completions of exactly --best-of-n-tokens new tokens (min_new_tokens) for each of
    --best-of-n-prompts prompts (babelrl's prompt texts), all in one batch (num_return_sequences), then one forward
    of the reward model (--reward-base + a fresh PEFT LoRA r=16 on all seven projections and a fresh score head)
    over every prompt + completion + EOS text (right-padded), argmax per prompt. 1 warm-up + 1 timed run."""
    import peft
    import torch

    if model is None:  # a training row left its LoRA in the loaded model
        model, _ = load_model(model_path, device, dtype)
    model.eval()
    tok = load_tokenizer(model_path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rm, rm_tok = load_reward_body(base, device, dtype)
    rm_tok.padding_side = "right"
    lora = peft.LoraConfig(r=TRAIN_RANK, lora_alpha=TRAIN_ALPHA, lora_dropout=0.0, target_modules=TRAIN_TARGETS,
                           bias="none", task_type="SEQ_CLS")
    rm = peft.get_peft_model(rm, lora).eval()
    texts = ["%s %d." % (BON_TEXT, i + 1) for i in range(prompts)]
    enc = tok(texts, return_tensors="pt", padding=True).to(device)
    torch.manual_seed(1)

    def run():
        with torch.no_grad():
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=samples, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            completions = tok.batch_decode(new, skip_special_tokens=True)
            sync(device)
            t1 = time.perf_counter()
            inputs = [texts[i // samples] + c + rm_tok.eos_token for i, c in enumerate(completions)]
            batch = rm_tok(inputs, return_tensors="pt", padding=True).to(device)
            scores = rm(**batch).logits[:, 0].view(prompts, samples)
            best = scores.argmax(-1).tolist()
            sync(device)
            t2 = time.perf_counter()
        assert new.shape == (prompts * samples, tokens), ("completions", tuple(new.shape))
        assert len(best) == prompts
        return t1 - t0, t2 - t1

    run()  # warm-up
    gen_s, score_s = run()
    total = gen_s + score_s
    n = prompts * samples
    print("\n| Best-of-n, transformers generate + reward-model forward, %d prompts × %d completions of %d tokens | "
          "s/run | generation s | scoring s | new tokens | completions scored/s |" % (prompts, samples, tokens))
    print("|---|---|---|---|---|---|")
    print("| 1 run after 1 warm-up | %.2f | %.2f | %.2f | %d | %.2f |" % (total, gen_s, score_s, n * tokens, n / total))
    figures["best_of_n_seconds"] = total
    figures["best_of_n_generation_seconds"] = gen_s
    figures["best_of_n_scoring_seconds"] = score_s
    figures["best_of_n_new_tokens"] = n * tokens
    figures["best_of_n_completions_per_s"] = n / total
    del model, rm
    return {"best_of_n": "transformers generate (sampling, temperature 1, exactly %d new tokens) of %d prompts × %d "
                         "in one batch, then one forward of %s + PEFT LoRA r=%d + a fresh score head over the %d "
                         "texts; 1 run after 1 warm-up" % (tokens, prompts, samples, os.path.basename(base),
                                                          TRAIN_RANK, n)}


def main():
    cache = os.environ.get("BABELRL_CACHE", os.path.expanduser("~/.cache/babelrl"))
    default = os.path.join(cache, "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--gemm-only", action="store_true")
    ap.add_argument("--train", action="store_true", help="also the SFT training row (LoRA r 16, all seven "
                    "projections): step and forward tokens/s, with and without gradient checkpointing, peak memory")
    ap.add_argument("--train-only", action="store_true", help="only the training row (implies --train)")
    ap.add_argument("--train-batch", type=int, default=8, help="sequences per training step (default 8)")
    ap.add_argument("--train-tokens", type=int, default=256, help="tokens per training sequence (default 256)")
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps after one warm-up "
                    "(default 3)")
    ap.add_argument("--grpo", action="store_true", help="also the GRPO step row (TRL GRPOTrainer, LoRA r 16 on "
                    "all seven projections), after everything else: s/step, its split, new tokens/s, peak memory")
    ap.add_argument("--grpo-only", action="store_true", help="only the GRPO row (implies --grpo)")
    ap.add_argument("--grpo-prompt-tokens", type=int, default=64, help="tokens of the one prompt (default 64)")
    ap.add_argument("--grpo-completion-tokens", type=int, default=64, help="new tokens of every completion "
                    "(default 64)")
    ap.add_argument("--grpo-generations", type=int, default=8, help="completions of the prompt per step "
                    "(default 8)")
    ap.add_argument("--grpo-steps", type=int, default=3, help="timed GRPO steps after one warm-up (default 3)")
    ap.add_argument("--grpo-beta", type=float, default=0.0, help="KL coefficient; 0 (the default) skips the "
                    "reference pass")
    ap.add_argument("--reward", action="store_true", help="also the reward-model row (TRL RewardTrainer, LoRA r 16 "
                    "+ score head on AutoModelForSequenceClassification of --reward-base)")
    ap.add_argument("--reward-only", action="store_true", help="only the reward-model row (with --dpo-only and "
                    "--best-of-n-only: those rows)")
    ap.add_argument("--reward-base", help="the reward model's base, a Hugging Face folder (default: --model when "
                    "it is one)")
    ap.add_argument("--reward-pairs", type=int, default=8, help="pairs per reward-model step (default 8)")
    ap.add_argument("--reward-tokens", type=int, default=256, help="tokens of each side of a pair (default 256)")
    ap.add_argument("--reward-steps", type=int, default=2, help="timed steps after one warm-up (default 2)")
    ap.add_argument("--dpo", action="store_true", help="also the DPO row (TRL DPOTrainer, LoRA r 16, reference = "
                    "adapter off)")
    ap.add_argument("--dpo-only", action="store_true", help="only the DPO row (see --reward-only)")
    ap.add_argument("--dpo-pairs", type=int, default=8, help="pairs per DPO step (default 8)")
    ap.add_argument("--dpo-prompt-tokens", type=int, default=64, help="prompt tokens of a pair (default 64)")
    ap.add_argument("--dpo-completion-tokens", type=int, default=192, help="tokens of each completion (default 192)")
    ap.add_argument("--dpo-steps", type=int, default=2, help="timed steps after one warm-up (default 2)")
    ap.add_argument("--dpo-beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    ap.add_argument("--best-of-n", action="store_true", help="also the best-of-n row (generate + reward-model "
                    "forward): completions scored per second")
    ap.add_argument("--best-of-n-only", action="store_true", help="only the best-of-n row (see --reward-only)")
    ap.add_argument("--best-of-n-prompts", type=int, default=2, help="prompts (default 2)")
    ap.add_argument("--best-of-n-samples", type=int, default=4, help="completions per prompt (default 4)")
    ap.add_argument("--best-of-n-tokens", type=int, default=32, help="new tokens per completion (default 32)")
    ap.add_argument("--profile", action="store_true", help="accepted for babelrl's sake; ignored")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="default: float32 on the CPU, float16 on CUDA")
    ap.add_argument("--json", help="also write the figures here, named as `babelrl bench --json` names them")
    ap.add_argument("--make-random-model", nargs=2, metavar=("CONFIG", "OUT_DIR"))
    args = ap.parse_args()
    pref_only = args.reward_only or args.dpo_only or args.best_of_n_only
    if sum((args.train_only, args.gemm_only, args.grpo_only, pref_only)) > 1:
        ap.error("--train-only, --gemm-only, --grpo-only and the --reward-only / --dpo-only / --best-of-n-only "
                 "group exclude each other")
    any_only = args.train_only or args.gemm_only or args.grpo_only or pref_only
    run_pref = lambda flag, only: only or (flag and (pref_only or not any_only))
    run_reward = run_pref(args.reward, args.reward_only)
    run_dpo = run_pref(args.dpo, args.dpo_only)
    run_bon = run_pref(args.best_of_n, args.best_of_n_only)
    reward_base = args.reward_base or (args.model if os.path.isdir(args.model) else None)
    if (run_reward or run_bon) and reward_base is None:
        ap.error("--reward, --best-of-n: the reward model's base is a Hugging Face folder; --model %s is not one: "
                 "pass --reward-base DIR" % args.model)
    if min(args.reward_pairs, args.reward_steps, args.dpo_pairs, args.dpo_steps, args.dpo_prompt_tokens,
           args.dpo_completion_tokens, args.best_of_n_prompts, args.best_of_n_samples, args.best_of_n_tokens) < 1 \
            or args.reward_tokens < 2:
        ap.error("--reward-*, --dpo-* and --best-of-n-* counts must be at least 1 (--reward-tokens at least 2)")
    if min(args.grpo_prompt_tokens, args.grpo_completion_tokens, args.grpo_steps) < 1 or args.grpo_generations < 2:
        ap.error("--grpo-prompt-tokens, --grpo-completion-tokens and --grpo-steps must be at least 1, "
                 "--grpo-generations at least 2 (a group of one has no advantage)")
    if args.grpo_beta < 0:
        ap.error("--grpo-beta must not be negative")
    if min(args.train_batch, args.train_steps) < 1 or args.train_tokens < 2:
        ap.error("--train-batch and --train-steps must be at least 1, --train-tokens at least 2")
    if args.make_random_model:
        make_random_model(*args.make_random_model)
        return

    import torch

    dtype_name = args.dtype or ("float32" if args.device == "cpu" else "float16")
    dtype = getattr(torch, dtype_name)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    model, attn = load_model(args.model, args.device, dtype)
    vocab = model.config.vocab_size
    where = (torch.cuda.get_device_name(0) if args.device == "cuda"
             else "CPU, %d threads" % torch.get_num_threads())
    print("peer: PyTorch %s, transformers %s attention, %s, on %s; model: %s" % (
        torch.__version__, attn, dtype_name, where, os.path.basename(os.path.normpath(args.model))))
    gen = torch.Generator().manual_seed(1)
    figures = {}
    p = args.prompt_tokens
    only = any_only
    if not only:
        print("\n| batch | prefill tokens/s (%d tokens) | decode tokens/s |" % args.prompt_tokens)
        print("|---|---|---|")
        for b in [int(x) for x in args.batch.split(",")]:
            prefill, decode = bench_model(model, args.device, vocab, b, args.prompt_tokens,
                                          args.decode_tokens, gen)
            print("| %d | %.1f | %.2f |" % (b, prefill, decode))
            figures["prefill tokens/s (%d tokens), batch %d" % (p, b)] = prefill
            figures["decode tokens/s, batch %d" % b] = decode
        print("\n| teacher-forced log-probs, 8 × (%d + %d) tokens | tokens run | tokens/s |"
              % (p, p))
        print("|---|---|")
        rate = bench_logprobs(model, args.device, vocab, p, gen)
        print("| one pass over the 8 rows | %d | %.1f |" % (16 * p, rate))
        figures["teacher-forced log-probs tokens/s, 8 × (%d + %d) tokens" % (p, p)] = rate
    if not (args.no_gemm or args.train_only or args.grpo_only or pref_only):
        bench_gemm(model.config, args.device, dtype, figures)
    train_meta = {}
    if (args.train and not (args.grpo_only or pref_only)) or args.train_only:
        train_meta = bench_train(model, args.device, vocab, args.train_batch, args.train_tokens, args.train_steps,
                                 torch.Generator().manual_seed(3), figures)
    grpo_meta = {}
    if (args.grpo and not (args.train_only or pref_only)) or args.grpo_only:
        grpo_meta = bench_grpo(model, args.device, args.model, args.grpo_prompt_tokens, args.grpo_completion_tokens,
                               args.grpo_generations, args.grpo_steps, args.grpo_beta, figures)
    pref_meta = {}
    if run_reward:
        pref_meta.update(bench_reward(reward_base, args.device, dtype, args.reward_pairs, args.reward_tokens,
                                      args.reward_steps, figures))
    if run_dpo:
        pref_meta.update(bench_dpo(None if grpo_meta else model, args.model, args.device, dtype, args.dpo_pairs,
                                   args.dpo_prompt_tokens, args.dpo_completion_tokens, args.dpo_steps, args.dpo_beta,
                                   figures))
        model = None  # the DPO row leaves its LoRA in it
    if run_bon:
        pref_meta.update(bench_best_of_n(None if grpo_meta else model, args.model, reward_base, args.device, dtype,
                                         args.best_of_n_prompts, args.best_of_n_samples, args.best_of_n_tokens, figures))
    if args.json:
        meta = {"engine": "PyTorch %s, transformers %s attention, %s" % (torch.__version__, attn, dtype_name),
                "adapter": where, "model": os.path.basename(os.path.normpath(args.model)), **train_meta,
                **grpo_meta, **pref_meta}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "figures": figures}, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
