"""Bradley-Terry reward-model training fixtures for make_fixtures.py (target `reward-train`, after
`reward-model`): TRL RewardTrainer's loss and its gradients on the tiny PEFT SEQ_CLS adapter, and PEFT's
scores with a reward model babelrl trained and saved (the babelrl -> PEFT half of the head's round trip).

Run through scripts/make_fixtures.py:
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py reward-train
Writes, under tests/fixtures/tiny-rm-llama/:
    pairs.jsonl              PAIRS as babelrl reads preference data (prompt, chosen, rejected, language)
    peft/bt-reference.json   for PAIRS as one batch on base + peft/ (LoRA r=4 + score head), as
                             RewardTrainer.compute_loss computes it with center_rewards_coefficient = CENTER:
                             the input ids (prompt + side + eos_token, tokenizer with special tokens), the
                             rewards, the loss, d loss / d rewards, d loss / d score.weight, and the gradients
                             of the LoRA factors in GRAD_FACTORS (PEFT names), by torch autograd in float32
Then it runs the ignored Rust test that trains and saves a reward model with babelrl (skip that step with
BABELRL_REWARD_TRAIN_NO_CARGO=1 to reuse the folder already there):
    cargo test -p babelrl --test inference reward_train::write_babelrl_trained_reward_model -- --ignored --exact
which trains peft/ with babelrl's RewardTrainer for a few AdamW steps on pairs.jsonl and saves it to
babelrl-rm/ (adapter_config.json, adapter_model.safetensors, base "..").
It loads that folder in PEFT (AutoModelForSequenceClassification + PeftModel.from_pretrained), checks PEFT
holds every tensor of the file as it is (LoRA factors and the score head, no missing or unexpected keys),
and writes babelrl-rm/expected.json: PEFT's scores of fixtures_reward_model.PAIRS (the format
engine/tests/inference/reward_model.rs checks babelrl's scores against).
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_reward_model import PAIRS as SCORE_PAIRS  # noqa: E402
from fixtures_reward_model import scores_of, write_expected  # noqa: E402
from make_fixtures import FIX, ROOT, log, torch_or_die  # noqa: E402

BASE = os.path.join(FIX, "tiny-rm-llama")
CENTER = 0.01
PAIRS = [  # (prompt, chosen, rejected, language): sides of different lengths; one pair rejected-longer
    ("the quick brown fox", " jumps over the lazy dog.", " sat.", "en"),
    ("hello", " world, hello there!", " 1234", "en"),
    ("The rain in Spain", " stays mainly in the plain.", " is the other thing ran in and out.", "es"),
]
GRAD_FACTORS = [
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight",
]
RUST_TEST = "reward_train::write_babelrl_trained_reward_model"
CARGO = ["cargo", "test", "-p", "babelrl", "--test", "inference", RUST_TEST, "--", "--ignored", "--exact"]


def load_rm(torch, adapter_dir, trainable=False):
    import transformers
    from peft import PeftModel

    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        BASE, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    return model


def ids_of(tok, prompt, side):
    text = prompt + side
    if not text.endswith(tok.eos_token):
        text += tok.eos_token
    return tok(text)["input_ids"]


def make_bt_reference(torch):
    import peft
    import transformers
    import trl
    from torch.nn import functional as F

    tok = transformers.AutoTokenizer.from_pretrained(BASE)
    with open(os.path.join(BASE, "pairs.jsonl"), "w") as f:
        for p, c, r, lang in PAIRS:
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r, "language": lang}) + "\n")
    model = load_rm(torch, os.path.join(BASE, "peft"), trainable=True)
    model.train()  # lora_dropout is 0: train mode only enables autograd bookkeeping
    ids = [ids_of(tok, p, c) for p, c, _, _ in PAIRS] + [ids_of(tok, p, r) for p, _, r, _ in PAIRS]
    width = max(len(i) for i in ids)
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    rewards = model(input_ids=batch, attention_mask=mask).logits.squeeze(-1)
    rewards.retain_grad()
    # RewardTrainer.compute_loss (TRL), verbatim.
    rewards_chosen, rewards_rejected = torch.chunk(rewards, chunks=2)
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected).mean()
    loss = loss + CENTER * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    loss.backward()
    params = dict(model.named_parameters())
    head = params["base_model.model.score.modules_to_save.default.weight"]
    grads = {}
    for name in GRAD_FACTORS:
        key = name.replace(".weight", ".default.weight")
        grads[name] = params[key].grad.tolist()
    doc = {
        "producer": "scripts/fixtures_reward_train.py", "transformers": transformers.__version__,
        "peft": peft.__version__, "trl": trl.__version__, "center_rewards_coefficient": CENTER,
        "loss_formula": "-logsigmoid(r_c - r_r).mean() + center * mean((r_c + r_r)^2)",
        "pairs": [{"prompt": p, "chosen": c, "rejected": r, "language": lang} for p, c, r, lang in PAIRS],
        "chosen_ids": ids[:len(PAIRS)], "rejected_ids": ids[len(PAIRS):],
        "rewards_chosen": rewards_chosen.tolist(), "rewards_rejected": rewards_rejected.tolist(),
        "loss": loss.item(),
        "grad_rewards_chosen": rewards.grad[:len(PAIRS)].tolist(),
        "grad_rewards_rejected": rewards.grad[len(PAIRS):].tolist(),
        "grad_score": head.grad[0].tolist(),
        "grad_lora": grads,
    }
    out = os.path.join(BASE, "peft", "bt-reference.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    log("reward-train: loss %.6f, rewards %s" % (loss.item(), ["%.4f" % v for v in rewards.tolist()]))


def write_rm_with_babelrl():
    if os.environ.get("BABELRL_REWARD_TRAIN_NO_CARGO") == "1":
        log("reward-train: BABELRL_REWARD_TRAIN_NO_CARGO=1, using babelrl-rm/ as it is")
        return
    log("reward-train: " + " ".join(CARGO))
    done = subprocess.run(CARGO, cwd=ROOT)
    if done.returncode != 0:
        sys.exit("make_fixtures.py reward-train: `%s` failed (exit %d)" % (" ".join(CARGO), done.returncode))


def check_babelrl_rm(torch):
    import peft
    import transformers
    from safetensors.torch import load_file

    saved = os.path.join(BASE, "babelrl-rm")
    model = load_rm(torch, saved).eval()
    file = load_file(os.path.join(saved, "adapter_model.safetensors"))
    held = peft.get_peft_model_state_dict(model)
    if set(held) != set(file):
        sys.exit("%s: PEFT's state dict and the file differ: only in PEFT %s, only in the file %s"
                 % (saved, sorted(set(held) - set(file))[:5], sorted(set(file) - set(held))[:5]))
    for k, v in file.items():
        if not torch.equal(held[k], v):
            sys.exit("%s: PEFT holds %s not as the file has it" % (saved, k))
    if model.peft_config["default"].task_type != "SEQ_CLS":
        sys.exit("%s: PEFT read task_type %s" % (saved, model.peft_config["default"].task_type))
    tok = transformers.AutoTokenizer.from_pretrained(BASE)
    ids, scores = scores_of(torch, model, tok, SCORE_PAIRS)
    write_expected(os.path.join(saved, "expected.json"), saved, ids, scores)
    log("reward-train: babelrl-rm in PEFT, scores %s" % ["%.4f" % s for s in scores])


def make_reward_train():
    torch = torch_or_die()
    make_bt_reference(torch)
    write_rm_with_babelrl()
    check_babelrl_rm(torch)
