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

Options mirror `babelrl bench` (--model, --prompt-tokens, --decode-tokens, --batch, --no-gemm,
--gemm-only, --train, --train-only, --train-batch, --train-tokens, --train-steps); babelrl-only options
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
    # get_peft_model injects the LoRA layers into `model` in place: the training row runs last.
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
    ap.add_argument("--profile", action="store_true", help="accepted for babelrl's sake; ignored")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="default: float32 on the CPU, float16 on CUDA")
    ap.add_argument("--json", help="also write the figures here, named as `babelrl bench --json` names them")
    ap.add_argument("--make-random-model", nargs=2, metavar=("CONFIG", "OUT_DIR"))
    args = ap.parse_args()
    if args.train_only and args.gemm_only:
        ap.error("--train-only and --gemm-only exclude each other")
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
    if not (args.gemm_only or args.train_only):
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
    if not (args.no_gemm or args.train_only):
        bench_gemm(model.config, args.device, dtype, figures)
    train_meta = {}
    if args.train or args.train_only:
        train_meta = bench_train(model, args.device, vocab, args.train_batch, args.train_tokens, args.train_steps,
                                 torch.Generator().manual_seed(3), figures)
    if args.json:
        meta = {"engine": "PyTorch %s, transformers %s attention, %s" % (torch.__version__, attn, dtype_name),
                "adapter": where, "model": os.path.basename(os.path.normpath(args.model)), **train_meta}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "figures": figures}, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
