"""GRPO objective fixture for make_fixtures.py: TRL 1.16's own loss code on fixed log-probs, with torch autograd.

Run through scripts/make_fixtures.py (target `grpo-loss`; no model needed):
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py grpo-loss
Writes tests/fixtures/grpo-loss-reference.json, read by engine/tests/inference/train_grpo_loss.rs
(babelrl::train::grpo: advantages, completion_mask, grpo_loss).

What runs TRL's code and what is copied from it (trl 1.16.0, trl/trainer/grpo_trainer.py):
  * the loss, its gradient and the logged metrics: `GRPOTrainer._compute_loss` itself (l. 3020-3290), called
    unbound on a stand-in `self` (`TrlStandIn` below) whose `_get_per_token_logps_and_entropies` returns the
    fixed policy log-probs as a float64 leaf tensor; `loss.backward()` gives d loss / d logp. The stand-in has
    only the attributes `_compute_loss` reads; its accelerator is one process's view (gather/reduce = identity),
    so the metrics are this micro-batch's, while `num_processes` still enters dapo's normaliser.
  * the loss mask: copied from `_generate_single_turn` l. 1880-1885 (keep tokens up to and including the first
    EOS) and `_generate_and_score_completions` l. 2487-2498 (mask_truncated_completions, num_items_in_batch);
    those sit inside generation, so they cannot be called alone.
  * the advantages: copied from `_generate_and_score_completions` l. 2758-2810 (sum_then_normalize with one
    reward function, NaN = unscorable), with TRL's own `nanstd` (trl/trainer/utils.py l. 1021), in float64.

The batch: GROUPS groups of G completions (12 sequences), completion token ids drawn from [3, 50) (EOS = 2,
pad = 0), lengths 1..MAX_COMPLETION_LENGTH: most end with EOS, two are truncated (max length, no EOS), one has
tokens after its first EOS (masked), one is EOS alone. In the flat layout babelrl uses, sequence s owns
`lengths[s]` consecutive tokens (every token the rollout produced, masked or not); TRL's tensors are those rows
right-padded to MAX_COMPLETION_LENGTH (pad positions hold log-probs too; the mask zeroes them). Log-probs are
float32-representable values (babelrl reads them from f32 buffers), computed on in float64:
    logp ~ -U(0.05, 4),  old = logp + N(0, 0.25),  ref = logp + N(0, 0.3)   (rounded to float32)
so with `old` (num_iterations > 1: old log-probs fixed at generation) ratios fall on both sides of the
[1 - epsilon, 1 + epsilon_high] window; without it (num_iterations = 1) TRL uses old = logp.detach().
Rewards: one group with a spread, one with a NaN (an unscorable completion), one with all rewards equal.

Cases: every loss_type (grpo, bnpo, dr_grpo, dapo) x scale_rewards (group, batch, none; the advantages the loss
sees) x beta (0, 0.04) x old (none = num_iterations 1, given = num_iterations 2), mask_truncated_completions
false; the same with mask_truncated_completions true and old given; plus two extra cases with old given:
delta = 1.3 (INTELLECT-2 cap, just above 1 + epsilon_high as TRL recommends) and use_bias_correction_kl = false
(the script checks that both change the result). epsilon 0.2, epsilon_high 0.28 everywhere.
Accumulation: gradient_accumulation_steps 2, steps_per_generation 4 (one generation batch feeds two optimizer
steps), num_processes 2 and num_items_in_batch = this micro-batch's active tokens + OTHER_ITEMS (the tokens of the
generation batch's other micro-batches and processes), so every term of every normaliser differs from 1.

JSON layout (floats are float64 reprs; NaN reward = null; per-token arrays in the flat layout):
  meta            versions, constants, formulas
  group_size, eos_ids, pad_id, max_completion_length, epsilon, epsilon_high, gradient_accumulation_steps,
  steps_per_generation, num_processes
  completions     [S][lengths[s]] token ids
  lengths         [S]
  mask            {"false": [N] 0/1, "true": [N] 0/1}   by mask_truncated_completions
  num_items_in_batch {"false": int, "true": int}
  rewards         [S] (null = unscorable)
  advantages      {"group"|"batch"|"none": [S] float64}  TRL's formula in float64
  advantages_f32  the same rounded to float32: what the loss cases use (babelrl's advantages() returns f32)
  logp, old_logp, ref_logp   [N]
  cases           [{name, loss_type, scale_rewards, beta, old, mask_truncated_completions, delta,
                    use_bias_correction_kl, loss, grad [N], metrics {kl?, clip_ratio/low_mean, ...}}]
"""

import json
import math
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, log, torch_or_die  # noqa: E402

SEED = 8101
G = 4
GROUPS = 3
MAX_COMPLETION_LENGTH = 8
EOS_ID = 2
PAD_ID = 0
FIRST_ID = 3
EPSILON = 0.2
EPSILON_HIGH = 0.28
GRADIENT_ACCUMULATION_STEPS = 2
STEPS_PER_GENERATION = 4
NUM_PROCESSES = 2
OTHER_ITEMS = 113
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")
BETAS = (0.0, 0.04)
# Completion shapes, per sequence: ("eos", n) = n - 1 tokens then EOS; ("trunc",) = MAX_COMPLETION_LENGTH
# tokens, no EOS; ("after", n, k) = n - 1 tokens, EOS, then k more tokens (a second EOS among them).
SHAPES = (
    ("eos", 5), ("eos", 8), ("trunc",), ("eos", 3),
    ("eos", 1), ("after", 3, 3), ("eos", 6), ("eos", 2),
    ("eos", 7), ("trunc",), ("eos", 4), ("eos", 2),
)
REWARDS = (0.9, 0.1, 0.45, 0.3,
           0.2, float("nan"), 0.75, 0.0,
           0.5, 0.5, 0.5, 0.5)


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def make_completions(rng):
    out = []
    for shape in SHAPES:
        body = lambda n: rng.integers(FIRST_ID, 50, size=n).tolist()  # noqa: E731
        if shape[0] == "eos":
            out.append(body(shape[1] - 1) + [EOS_ID])
        elif shape[0] == "trunc":
            out.append(body(MAX_COMPLETION_LENGTH))
        else:
            n, k = shape[1], shape[2]
            tail = body(k)
            tail[1] = EOS_ID
            out.append(body(n - 1) + [EOS_ID] + tail)
        assert len(out[-1]) <= MAX_COMPLETION_LENGTH
    return out


def trl_masks(torch, completions, mask_truncated_completions):
    """The loss mask and num_items_in_batch as TRL builds them (local part; see the module docstring)."""
    device = "cpu"
    eos_token_ids = [EOS_ID]
    completion_ids = torch.full((len(completions), MAX_COMPLETION_LENGTH), PAD_ID, dtype=torch.long)
    for i, c in enumerate(completions):
        completion_ids[i, :len(c)] = torch.tensor(c)
    # --- trl/trainer/grpo_trainer.py l. 1880-1885 (_generate_single_turn), verbatim ---
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=device))
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=device)
    eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
    sequence_indices = torch.arange(is_eos.size(1), device=device).expand(is_eos.size(0), -1)
    completion_mask = (sequence_indices <= eos_idx.unsqueeze(1)).int()
    completion_ids_list = [c[m].tolist() for c, m in zip(completion_ids, completion_mask.bool(), strict=True)]
    # --- l. 2487-2498 (_generate_and_score_completions), with self.* as constants, no tool mask ---
    if mask_truncated_completions:
        eos_and_pad = [*eos_token_ids, PAD_ID]
        is_truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completion_ids_list], device=device)
        completion_mask = completion_mask * (~is_truncated).unsqueeze(1).int()
    loss_mask = completion_mask
    num_items_local = int(loss_mask.sum())
    return completion_mask, num_items_local


def trl_advantages(torch, rewards, scale_rewards):
    """l. 2758-2810 of _generate_and_score_completions (sum_then_normalize), float64, one reward function."""
    from trl.trainer.utils import nanstd

    num_generations = G
    rewards_per_func = torch.tensor(rewards, dtype=torch.float64).unsqueeze(1)
    reward_weights = torch.ones(1, dtype=torch.float64)
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    # --- verbatim from here (self.scale_rewards -> scale_rewards) ---
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        if rewards.numel() > 1:
            std_rewards = nanstd(rewards).expand_as(rewards)
        else:
            std_rewards = torch.zeros_like(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return advantages.tolist()


class TrlStandIn:
    """The attributes GRPOTrainer._compute_loss reads, for one process in train mode."""

    def __init__(self, torch, logp, loss_type, beta, delta, use_bias_correction_kl):
        from collections import defaultdict

        self._logp = logp
        self._torch = torch
        self.loss_type = loss_type
        self.beta = beta
        self.epsilon_low = EPSILON
        self.epsilon_high = EPSILON_HIGH
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self.importance_sampling_level = "token"
        self.use_vllm = False
        self.vllm_importance_sampling_correction = False
        self._entropy_bonus_enabled = False
        self.aux_loss_enabled = False
        self.max_completion_length = MAX_COMPLETION_LENGTH
        self.current_gradient_accumulation_steps = GRADIENT_ACCUMULATION_STEPS
        self.args = types.SimpleNamespace(use_bias_correction_kl=use_bias_correction_kl, delta=delta,
                                          steps_per_generation=STEPS_PER_GENERATION)
        self.model = types.SimpleNamespace(training=True)
        self.accelerator = types.SimpleNamespace(num_processes=NUM_PROCESSES, gather=lambda x: x,
                                                 reduce=lambda x, reduction="sum": x)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        return self._logp, self._torch.zeros_like(self._logp), None


def padded(torch, flat, lengths, fill):
    out = torch.tensor(fill, dtype=torch.float64)
    start = 0
    for i, n in enumerate(lengths):
        out[i, :n] = torch.tensor(flat[start:start + n], dtype=torch.float64)
        start += n
    return out


def unpadded(t, lengths):
    return [float(v) for i, n in enumerate(lengths) for v in t[i, :n].tolist()]


def run_case(torch, base, case):
    from trl.trainer.grpo_trainer import GRPOTrainer

    lengths = base["lengths"]
    key = "true" if case["mask_truncated_completions"] else "false"
    logp = padded(torch, base["logp"], lengths, base["pad_logp"]).requires_grad_(True)
    mask = torch.zeros((len(lengths), MAX_COMPLETION_LENGTH), dtype=torch.int32)
    start = 0
    for i, n in enumerate(lengths):
        mask[i, :n] = torch.tensor(base["mask"][key][start:start + n], dtype=torch.int32)
        start += n
    inputs = {
        "prompt_ids": torch.full((len(lengths), 1), FIRST_ID, dtype=torch.long),
        "prompt_mask": torch.ones((len(lengths), 1), dtype=torch.int32),
        "completion_ids": torch.zeros((len(lengths), MAX_COMPLETION_LENGTH), dtype=torch.long),
        "completion_mask": mask,
        "advantages": torch.tensor(base["advantages_f32"][case["scale_rewards"]], dtype=torch.float64),
        "num_items_in_batch": torch.tensor(base["num_items_in_batch"][key]),
    }
    if case["old"]:
        inputs["old_per_token_logps"] = padded(torch, base["old_logp"], lengths, base["pad_old"])
    if case["beta"] != 0.0:
        inputs["ref_per_token_logps"] = padded(torch, base["ref_logp"], lengths, base["pad_ref"])
    trl = TrlStandIn(torch, logp, case["loss_type"], case["beta"], case["delta"], case["use_bias_correction_kl"])
    loss = GRPOTrainer._compute_loss(trl, None, inputs)
    loss.backward()
    grad = logp.grad
    # Padding and masked positions get no gradient (TRL multiplies by the mask before aggregating).
    for i, n in enumerate(lengths):
        assert float(grad[i, n:].abs().sum()) == 0.0, (case["name"], i)
    metrics = {k: v[0] for k, v in trl._metrics["train"].items() if k != "entropy"}
    for k, v in metrics.items():
        assert len(trl._metrics["train"][k]) == 1, k
        metrics[k] = None if math.isnan(v) else v
    return float(loss.detach()), unpadded(grad, lengths), metrics


def make_cases():
    cases = []

    def add(loss_type, scale, beta, old, trunc, delta=None, bias=True, tag=""):
        name = "%s/%s/beta=%g/%s/%s%s" % (loss_type, scale, beta, "old" if old else "on-policy",
                                          "mask_truncated" if trunc else "keep_truncated", tag)
        cases.append(dict(name=name, loss_type=loss_type, scale_rewards=scale, beta=beta, old=old,
                          mask_truncated_completions=trunc, delta=delta, use_bias_correction_kl=bias))

    for loss_type in LOSS_TYPES:
        for scale in SCALES:
            for beta in BETAS:
                for old in (False, True):
                    add(loss_type, scale, beta, old, False)
                add(loss_type, scale, beta, True, True)
    add("dapo", "group", 0.04, True, False, delta=1.3, tag="/delta=1.3")
    add("grpo", "group", 0.04, True, False, bias=False, tag="/no_bias_correction_kl")
    return cases


def make_grpo_loss():
    torch = torch_or_die()
    import trl

    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(SEED)
    completions = make_completions(rng)
    lengths = [len(c) for c in completions]
    n_tok = sum(lengths)
    shape = (len(lengths), MAX_COMPLETION_LENGTH)
    full_logp = f32(-rng.uniform(0.05, 4.0, size=shape))
    full_old = f32(full_logp + rng.normal(0.0, 0.25, size=shape))
    full_ref = f32(full_logp + rng.normal(0.0, 0.3, size=shape))
    flat = lambda a: [float(a[i, j]) for i, n in enumerate(lengths) for j in range(n)]  # noqa: E731

    base = {"lengths": lengths, "logp": flat(full_logp), "old_logp": flat(full_old), "ref_logp": flat(full_ref),
            "pad_logp": full_logp.tolist(), "pad_old": full_old.tolist(), "pad_ref": full_ref.tolist(),
            "mask": {}, "num_items_in_batch": {}, "advantages": {}, "advantages_f32": {}}
    for key, trunc in (("false", False), ("true", True)):
        m, local = trl_masks(torch, completions, trunc)
        base["mask"][key] = [int(m[i, j]) for i, n in enumerate(lengths) for j in range(n)]
        base["num_items_in_batch"][key] = local + OTHER_ITEMS
    for scale in SCALES:
        adv = trl_advantages(torch, list(REWARDS), scale)
        base["advantages"][scale] = adv
        base["advantages_f32"][scale] = f32(adv).tolist()

    cases = make_cases()
    for case in cases:
        case["loss"], case["grad"], case["metrics"] = run_case(torch, base, case)
    by_name = {c["name"]: c for c in cases}
    for c in cases[-2:]:  # the extra options must change the result, or they test nothing
        plain = by_name[c["name"].rsplit("/", 1)[0]]
        assert c["loss"] != plain["loss"] and c["grad"] != plain["grad"], c["name"]
    clipped = [c["metrics"]["clip_ratio/region_mean"] for c in cases if c["old"]]
    assert min(clipped) > 0.0, "every off-policy case should clip some tokens"
    assert all(c["metrics"]["clip_ratio/region_mean"] == 0.0 for c in cases if not c["old"])

    import transformers
    doc = {
        "meta": {
            "producer": "scripts/fixtures_grpo_loss.py (make_fixtures.py grpo-loss)",
            "trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "reference": "trl.trainer.grpo_trainer.GRPOTrainer._compute_loss run on a stand-in self; masks and "
                         "advantages copied from the same file (l. 1880-1885, 2487-2498, 2758-2810)",
            "compute": "float64 CPU, inputs float32-representable",
            "per_token_loss": "-min(r*A, clamp(r, 1-epsilon, 1+epsilon_high)*A) + beta*r*(exp(ref-logp)-(ref-logp)-1), "
                              "r = exp(logp - old) (old = logp.detach() when absent; r capped at delta in the "
                              "first branch when delta is set; the KL not multiplied by r without bias correction)",
            "aggregation": "grpo: mean_s(sum_t m*l / max(sum_t m, 1)) / GA; bnpo: sum m*l / max(sum m, 1) / GA; "
                           "dr_grpo: sum m*l / (S * max_completion_length) / GA; dapo: sum m*l / "
                           "(max(num_items_in_batch, 1) / num_processes * GA / steps_per_generation)",
            "advantages": "(R - mean_group R) / (std + 1e-4), std unbiased (n-1), NaN rewards ignored, NaN "
                          "advantages -> 0; group: std per group, batch: std over all rewards, none: no division",
        },
        "group_size": G, "eos_ids": [EOS_ID], "pad_id": PAD_ID, "max_completion_length": MAX_COMPLETION_LENGTH,
        "epsilon": EPSILON, "epsilon_high": EPSILON_HIGH,
        "gradient_accumulation_steps": GRADIENT_ACCUMULATION_STEPS, "steps_per_generation": STEPS_PER_GENERATION,
        "num_processes": NUM_PROCESSES,
        "completions": completions, "lengths": lengths, "mask": base["mask"],
        "num_items_in_batch": base["num_items_in_batch"],
        "rewards": [None if math.isnan(r) else r for r in REWARDS],
        "advantages": base["advantages"], "advantages_f32": base["advantages_f32"],
        "logp": base["logp"], "old_logp": base["old_logp"], "ref_logp": base["ref_logp"],
        "cases": cases,
    }
    assert len(doc["logp"]) == n_tok
    path = os.path.join(FIX, "grpo-loss-reference.json")
    with open(path, "w") as f:  # one top-level key (and one case) per line: readable diffs, small file
        lines = []
        for k, v in doc.items():
            if k == "cases":
                body = ",\n".join(json.dumps(c, allow_nan=False) for c in v)
                lines.append('"cases": [\n%s\n]' % body)
            else:
                lines.append("%s: %s" % (json.dumps(k), json.dumps(v, allow_nan=False)))
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    with open(path) as f:
        assert json.load(f) == json.loads(json.dumps(doc)), path
    log("grpo-loss-reference.json: %d cases, %d tokens, %d bytes" % (len(cases), n_tok, os.path.getsize(path)))


if __name__ == "__main__":
    make_grpo_loss()
