#!/usr/bin/env python3
"""Write tests/fixtures/adamw-reference.safetensors: torch's AdamW, clip_grad_norm_ and a warmup + cosine LambdaLR
(transformers' lambda) for a few steps on small random tensors with given gradients, the independent
reference babelrl's GPU optimizer is checked against (engine/tests/inference/train_optim.rs).

How to run (needs torch and transformers; CI does not run this):
    /root/.venvs/fixtures/bin/python scripts/adamw_fixture.py

What it records (f32 tensors, exact): each tensor's initial value `init.NAME`, and per optimizer step S the
two micro-batch gradients `stepS.grad0.NAME`, `stepS.grad1.NAME` and, after the step, `stepS.param.NAME`,
`stepS.exp_avg.NAME`, `stepS.exp_avg_sq.NAME`; `lr` (f64, the learning rate each step used) and
`grad_norm` (f32, what clip_grad_norm_ returned); the config and versions as JSON in the metadata. Each step accumulates two
micro-batches the way a Trainer does (each micro-batch's gradient divided by the accumulation count and
summed into .grad), then clips to max_grad_norm, then steps AdamW (torch's single-tensor path, as on CPU),
then steps the schedule. Sizes are awkward on purpose (not multiples of 64); one tensor has gradients of
order 1e-6, where eps's placement (outside the square root) decides the update; one tensor is excluded
from weight decay, as transformers excludes biases and norms. Step 3's gradients are small enough that
clipping does not act (coefficient 1). Everything is seeded: re-running gives the same file.
"""

import json
import math
import os

import torch
from safetensors.torch import save_file
import transformers
from transformers.optimization import get_cosine_schedule_with_warmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "adamw-reference.safetensors")

# (name, shape, initial scale, gradient scale, weight decay applies)
TENSORS = [
    ("a", [3, 7], 1.0, 1.0, True),
    ("b", [70], 0.5, 0.5, True),
    ("tiny", [9], 0.2, 1e-6, True),
    ("nodecay", [3], 1.0, 2.0, False),
]
STEPS = 5
ACCUM = 2
CONFIG = dict(
    learning_rate=1e-3,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    weight_decay=0.1,
    max_grad_norm=1.0,
    lr_scheduler_type="cosine",
    warmup_steps=2,
    max_steps=STEPS,
    gradient_accumulation_steps=ACCUM,
)


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    def uniform(shape, scale):
        return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * scale

    params = {name: torch.nn.Parameter(uniform(shape, s)) for name, shape, s, _, _ in TENSORS}
    out = {f"init.{n}": p.detach().clone() for n, p in params.items()}
    decay = [params[n] for n, _, _, _, d in TENSORS if d]
    no_decay = [params[n] for n, _, _, _, d in TENSORS if not d]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": CONFIG["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=CONFIG["learning_rate"],
        betas=(CONFIG["adam_beta1"], CONFIG["adam_beta2"]),
        eps=CONFIG["adam_epsilon"],
        foreach=False,
        fused=False,
    )
    sched = get_cosine_schedule_with_warmup(opt, CONFIG["warmup_steps"], STEPS)

    lrs, norms = [], []
    for step in range(STEPS):
        for name, shape, _, gscale, _ in TENSORS:
            scale = gscale * (0.01 if step == 3 else 1.0)
            p = params[name]
            p.grad = None
            for k in range(ACCUM):
                g = uniform(shape, scale)  # a micro-batch gradient as babelrl receives it
                out[f"step{step}.grad{k}.{name}"] = g
                # loss / ACCUM backpropagated: each micro-batch adds g / ACCUM into .grad
                p.grad = g / ACCUM if p.grad is None else p.grad + g / ACCUM
        lrs.append(opt.param_groups[0]["lr"])
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), CONFIG["max_grad_norm"])))
        opt.step()
        sched.step()
        for name, p in params.items():
            out[f"step{step}.param.{name}"] = p.detach().clone()
            out[f"step{step}.exp_avg.{name}"] = opt.state[p]["exp_avg"].clone()
            out[f"step{step}.exp_avg_sq.{name}"] = opt.state[p]["exp_avg_sq"].clone()

    assert all(math.isfinite(n) for n in norms)
    out["lr"] = torch.tensor(lrs, dtype=torch.float64)
    out["grad_norm"] = torch.tensor(norms, dtype=torch.float32)
    meta = {
        "generated_by": "scripts/adamw_fixture.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": json.dumps(CONFIG),
        "tensors": json.dumps([{"name": n, "shape": sh, "weight_decay": d} for n, sh, _, _, d in TENSORS]),
    }
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); lr:", lrs, "grad norms:", norms)


if __name__ == "__main__":
    main()
