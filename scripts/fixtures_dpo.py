"""DPO fixture: TRL 1.16's sigmoid DPO loss, its metrics and every LoRA gradient, on the tiny Qwen2 with its
committed PEFT adapter.

Run (after make_fixtures.py `tiny` and `lora`):
    /root/.venvs/fixtures/bin/python scripts/fixtures_dpo.py
Writes tests/fixtures/tiny-qwen2/lora/dpo-expected.safetensors, read by engine/tests/inference/train_dpo.rs
(babelrl::train::dpo: the micro-batch pass the DpoTrainer runs).

The formula is TRL 1.16's `DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py l. 1285-1388, loss_type
"sigmoid", ld_alpha None, f_divergence_type "reverse_kl") and its metrics (l. 1582-1601), written out here: that
method needs TRL's fused-LM-head model outputs, so it cannot be called on a plain PEFT model. For pair i:
    c_i = sum over the chosen completion tokens of log softmax(z[t-1])[x[t]]   (policy: adapter on)
    r_i = the same for the rejected completion
    c_ref_i, r_ref_i = the same with the adapter disabled (PEFT's disable_adapter(): TRL's reference for a PEFT
                       model without a "ref" adapter)
    loss = mean_i -logsigmoid(beta * ((c_i - c_ref_i) - (r_i - r_ref_i)))
    rewards/chosen = mean beta (c - c_ref), rewards/rejected = mean beta (r - r_ref),
    rewards/accuracies = mean [beta (c - c_ref) > beta (r - r_ref)], rewards/margins = their mean difference
The gradient: loss.backward() through the policy's log-probs only (the reference is under no_grad).

The pairs: PAIRS prompts of random ids from [3, vocab) (seed 910), each with a chosen and a rejected completion of
different lengths (no EOS appended: the ids are the sequences). Float32, eager attention, CPU, one unpadded pass
per sequence.

What the file holds (float32 unless said):
    input_ids        int64 [sum n]   the chosen sequences (prompt + chosen), then the rejected ones, concatenated
    lengths          int64 [2P]      tokens of each sequence
    prompt_lengths   int64 [2P]
    beta             [1]
    loss             [1]
    logps            [4, P]          c, r, c_ref, r_ref
    metrics          [4]             rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins
    grad.NAME        every LoRA gradient of `loss`, NAME as in adapter_model.safetensors
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_lora import load_base  # noqa: E402
from fixtures_train import peft_name, save_stable  # noqa: E402
from make_fixtures import FIX, log, torch_or_die  # noqa: E402

MODEL = "tiny-qwen2"
BETA = 0.1
# (prompt length, chosen length, rejected length) per pair.
PAIRS = ((5, 4, 6), (3, 7, 2), (6, 3, 3))
FIRST_ID = 3


def seq_logp(torch, model, ids, prompt_len):
    logits = model(input_ids=torch.tensor(ids)[None]).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(ids[1:])
    picked = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return picked[prompt_len - 1:].sum()


def main():
    torch = torch_or_die()
    import peft
    import transformers
    import trl

    torch.manual_seed(0)
    out_dir = os.path.join(FIX, MODEL, "lora")
    base = load_base(torch, MODEL)
    model = peft.PeftModel.from_pretrained(base, out_dir, is_trainable=True)
    model.train()
    assert model.peft_config["default"].lora_dropout == 0.0
    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rng = np.random.default_rng(910)
    vocab = base.config.vocab_size
    chosen, rejected = [], []
    for p, c, r in PAIRS:
        prompt = rng.integers(FIRST_ID, vocab, size=p).tolist()
        chosen.append((prompt + rng.integers(FIRST_ID, vocab, size=c).tolist(), p))
        rejected.append((prompt + rng.integers(FIRST_ID, vocab, size=r).tolist(), p))
    pol = [torch.stack([seq_logp(torch, model, s, p) for s, p in side]) for side in (chosen, rejected)]
    with torch.no_grad(), model.disable_adapter():
        ref = [torch.stack([seq_logp(torch, model, s, p) for s, p in side]) for side in (chosen, rejected)]
    chosen_logratios = pol[0] - ref[0]
    rejected_logratios = pol[1] - ref[1]
    delta = chosen_logratios - rejected_logratios
    loss = (-torch.nn.functional.logsigmoid(BETA * delta)).mean()
    loss.backward()
    cr, rr = BETA * chosen_logratios.detach(), BETA * rejected_logratios.detach()
    metrics = [cr.mean().item(), rr.mean().item(), (cr > rr).float().mean().item(), (cr - rr).mean().item()]
    exp = {"grad." + peft_name(n): p.grad.detach().numpy().astype(np.float32).copy() for n, p in lora}
    seqs = chosen + rejected
    exp.update({
        "input_ids": np.concatenate([np.array(s, dtype=np.int64) for s, _ in seqs]),
        "lengths": np.array([len(s) for s, _ in seqs], dtype=np.int64),
        "prompt_lengths": np.array([p for _, p in seqs], dtype=np.int64),
        "beta": np.array([BETA], dtype=np.float32),
        "loss": np.array([loss.item()], dtype=np.float32),
        "logps": np.array([[float(v) for v in t.detach()] for t in (pol[0], pol[1], ref[0], ref[1])],
                          dtype=np.float32),
        "metrics": np.array(metrics, dtype=np.float32),
    })
    meta = {
        "producer": "scripts/fixtures_dpo.py",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "trl": trl.__version__, "beta": json.dumps(BETA), "pairs": json.dumps(PAIRS),
        "formula": "loss = mean_i -logsigmoid(beta ((c_i - c_ref_i) - (r_i - r_ref_i))), sums over completion "
                   "tokens; reference = adapter disabled",
    }
    path = os.path.join(out_dir, "dpo-expected.safetensors")
    save_stable(exp, path, meta)
    os.chmod(path, 0o644)
    log("%s: loss %.6f, metrics %s, %d gradients" % (path, loss.item(), metrics, len(lora)))


if __name__ == "__main__":
    main()
