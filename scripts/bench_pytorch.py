#!/usr/bin/env python3
"""The peer for `babelrl bench`: the same model under PyTorch (transformers) with the same measurements
on the same shapes, so the two tables compare like with like:

  * prefill: one prompt of --prompt-tokens per sequence, logits of the last position only
    (`logits_to_keep=1`, as babelrl computes only the rows it samples from);
  * decode: --decode-tokens greedy steps with a KV cache, at each batch size of --batch;
  * teacher-forced log-probs of a GRPO-sized group (one prompt, eight completions as long as the prompt),
    all positions' logits, one pass over the eight (prompt + completion) rows;
  * GEMM GFLOP/s on the model's matrix shapes (torch.matmul of activations by the transposed weight).

Options mirror `babelrl bench` (--model, --prompt-tokens, --decode-tokens, --batch, --no-gemm,
--gemm-only); babelrl-only options (--profile) are accepted and ignored, so scripts/bench.sh can pass the
same arguments to both sides. --device cuda runs the CUDA peer (scripts/bench_gpu.sh), in --dtype float16
by default there; on the CPU the default is float32 with eager attention.

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
    ap.add_argument("--profile", action="store_true", help="accepted for babelrl's sake; ignored")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="default: float32 on the CPU, float16 on CUDA")
    ap.add_argument("--json", help="also write the figures here, named as `babelrl bench --json` names them")
    ap.add_argument("--make-random-model", nargs=2, metavar=("CONFIG", "OUT_DIR"))
    args = ap.parse_args()
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
    if not args.gemm_only:
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
    if not args.no_gemm:
        bench_gemm(model.config, args.device, dtype, figures)
    if args.json:
        meta = {"engine": "PyTorch %s, transformers %s attention, %s" % (torch.__version__, attn, dtype_name),
                "adapter": where, "model": os.path.basename(os.path.normpath(args.model))}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "figures": figures}, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
