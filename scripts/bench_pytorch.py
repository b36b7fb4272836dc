#!/usr/bin/env python3
"""The peer for `babelrl bench`: the same model under PyTorch (transformers, eager attention, float32) on
this CPU, with the same measurements: prefill tokens/s of a 128-token prompt and greedy decode tokens/s at
batch 1 and 8 with a KV cache.

Run with the fixtures venv (torch is not installed in CI):
    /root/.venvs/fixtures/bin/python scripts/bench_pytorch.py [--model PATH.gguf] [--batch 1,8]
"""
import argparse
import os
import time


def main():
    cache = os.environ.get("BABELRL_CACHE", os.path.expanduser("~/.cache/babelrl"))
    default = os.path.join(cache, "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=16)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(args.model), gguf_file=os.path.basename(args.model), dtype=torch.float32,
        attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    print("peer: PyTorch %s (transformers, eager, float32), %d threads; model: %s"
          % (torch.__version__, torch.get_num_threads(), os.path.basename(args.model)))
    print("\n| batch | prefill tokens/s (%d tokens) | decode tokens/s |" % args.prompt_tokens)
    print("|---|---|---|")
    g = torch.Generator().manual_seed(1)
    for b in [int(x) for x in args.batch.split(",")]:
        ids = torch.randint(0, vocab, (b, args.prompt_tokens), generator=g)
        with torch.no_grad():
            model(ids)  # warm-up
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            prefill = b * args.prompt_tokens / (time.perf_counter() - t0)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(args.decode_tokens):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            decode = b * args.decode_tokens / (time.perf_counter() - t0)
        print("| %d | %.1f | %.2f |" % (b, prefill, decode))


if __name__ == "__main__":
    main()
