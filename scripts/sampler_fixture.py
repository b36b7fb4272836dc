#!/usr/bin/env python3
"""Generate tests/fixtures/sampler-warpers.json: which tokens Hugging Face's sampling warpers keep, and
their probabilities, for a few logit rows and (temperature, top_k, top_p) settings.

How to run (needs torch and transformers; CI does not run this):
    /root/.venvs/fixtures/bin/python scripts/sampler_fixture.py

The warpers are applied as GenerationMixin._get_logits_processor does when sampling: Temperature (when
!= 1), TopK (when top_k != 0), TopP (when top_p < 1), in that order, with min_tokens_to_keep = 1; the
probabilities are the softmax of the warped scores (what torch.multinomial draws from). Cases whose
top-p cut lies within 1e-5 of a cumulative sum are refused, so float rounding cannot decide them.
"""

import json
import os

import numpy as np
import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sampler-warpers.json")


def warp(logits, temperature, top_k, top_p):
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        procs.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    scores = procs(torch.zeros((1, 1), dtype=torch.long), torch.tensor([logits], dtype=torch.float32))
    return scores[0]


def unnormalised_top_p(logits, temperature, top_k, top_p):
    """The rule babelrl used before: top-p summed over probabilities not renormalised after top-k."""
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, -1)
    order = sorted(range(len(logits)), key=lambda i: -p[i])
    if top_k:
        order = order[:top_k]
    if top_p < 1.0:
        mass, keep = 0.0, 0
        for i in order:
            mass += float(p[i])
            keep += 1
            if mass >= top_p:
                break
        order = order[:keep]
    return sorted(order)


def near_cut(logits, temperature, top_k, top_p):
    s = torch.tensor(logits, dtype=torch.float64) / temperature
    if top_k:
        kth = torch.topk(s, top_k).values[-1]
        s = s.masked_fill(s < kth, -float("inf"))
    c = torch.softmax(torch.sort(s).values, -1).cumsum(-1)
    return top_p < 1.0 and bool(((c - (1 - top_p)).abs() < 1e-5).any())


def main():
    rng = np.random.default_rng(6)
    rows = [rng.normal(0, 2, 24).astype(np.float32).tolist() for _ in range(3)]
    rows.append([float(np.log(v)) for v in (1, 2, 3, 4)])  # p ∝ 1, 2, 3, 4
    rows.append([1.0, 2.0, 2.0, 0.0, 2.0, -1.0])          # ties at the top-k cut
    settings = [(1.0, 0, 0.9), (0.7, 5, 1.0), (1.0, 5, 0.8), (1.3, 8, 0.6), (0.5, 3, 0.95), (1.0, 2, 0.5),
                (0.8, 2, 0.99)]
    cases, differs = [], 0
    for r, logits in enumerate(rows):
        for temperature, top_k, top_p in settings:
            if top_k > len(logits) or near_cut(logits, temperature, top_k, top_p):
                continue
            scores = warp(logits, temperature, top_k, top_p)
            kept = [i for i in range(len(logits)) if torch.isfinite(scores[i])]
            probs = torch.softmax(scores.double(), -1)
            differs += kept != unnormalised_top_p(logits, temperature, top_k, top_p)
            cases.append(dict(row=r, temperature=temperature, top_k=top_k, top_p=top_p, kept=kept,
                              probs=[float(probs[i]) for i in kept]))
    assert differs > 0, "no case tells renormalised top-p from the old rule"
    with open(OUT, "w") as f:
        json.dump(dict(transformers=transformers.__version__, torch=torch.__version__,
                       note="kept ids ascending; probs = softmax of the warped scores at those ids",
                       rows=rows, cases=cases), f, indent=1)
    print(f"{len(cases)} cases, {differs} where the unnormalised rule keeps another set -> {OUT}")


if __name__ == "__main__":
    main()
