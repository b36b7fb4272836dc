"""PEFT LoRA fixtures for make_fixtures.py: an adapter on all seven projections of each tiny decoder.

Run through scripts/make_fixtures.py (target `lora`, after `tiny`); see that file for how. For each
tests/fixtures/tiny-{qwen2,qwen3,llama}/ it writes lora/ with:
    adapter_config.json, adapter_model.safetensors   PEFT's save_pretrained (r=4, alpha=8; tiny-qwen3 with
                                                     use_rslora=True), A and B seeded random and non-zero
    expected.safetensors                             PEFT's logits and teacher-forced log-probs on the
                                                     decoder fixture's inputs, adapter on and disabled,
                                                     and GREEDY_NEW greedy tokens after the first
                                                     GREEDY_PROMPT tokens of input 0 (no stop token)
`check DIR MODEL` (run as `python scripts/fixtures_lora.py check ADAPTER_DIR tests/fixtures/tiny-qwen2`)
loads an adapter folder, e.g. one babelrl saved, in PEFT and checks its logits against that model's lora
fixture: the other direction of the round trip.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, TINY, dir_size, expected_for, fixed_inputs, log, torch_or_die  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
GREEDY_PROMPT, GREEDY_NEW = 4, 8


def greedy(torch, model, prompt, steps):
    """Greedy decoding by full forward passes (argmax of the last row), ignoring stop tokens."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return np.array(ids[len(prompt):], dtype=np.int64)


def load_base(torch, name):
    import transformers

    model_cls = TINY[name][1]
    return getattr(transformers, model_cls).from_pretrained(
        os.path.join(FIX, name), dtype=torch.float32, attn_implementation="eager").eval()


def randomise_lora(torch, model, seed):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's own range), B ~ N(0, 0.1): the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname:
                bound = 1.0 / p.shape[1] ** 0.5
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            elif "lora_B" in pname:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_lora():
    torch = torch_or_die()
    import peft
    import transformers
    from safetensors.numpy import save_file

    for name, (_, _, _, _, seed) in TINY.items():
        if not os.path.exists(os.path.join(FIX, name, "model.safetensors")):
            sys.exit("make_fixtures.py lora: run the 'tiny' target first (needs tests/fixtures/%s)" % name)
        out = os.path.join(FIX, name, "lora")
        os.makedirs(out, exist_ok=True)
        base = load_base(torch, name)
        cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                              use_rslora=(name == "tiny-qwen3"), task_type="CAUSAL_LM")
        model = peft.get_peft_model(base, cfg).eval()
        randomise_lora(torch, model, seed + 500)
        model.peft_config["default"].base_model_name_or_path = "tests/fixtures/" + name
        model.save_pretrained(out, safe_serialization=True)
        readme = os.path.join(out, "README.md")
        if os.path.exists(readme):
            os.remove(readme)  # PEFT's model-card template: not needed for a fixture
        inputs = fixed_inputs(seed, base.config.vocab_size)
        on = expected_for(torch, model, inputs)
        with model.disable_adapter():
            off = expected_for(torch, model, inputs)
        exp = dict(on)
        exp["greedy_ids"] = greedy(torch, model, inputs[0][:GREEDY_PROMPT], GREEDY_NEW)
        with model.disable_adapter():
            exp["greedy_ids_off"] = greedy(torch, model, inputs[0][:GREEDY_PROMPT], GREEDY_NEW)
        assert (exp["greedy_ids"] != exp["greedy_ids_off"]).any(), (name, "the adapter does not change greedy")
        for k, v in off.items():
            if not k.startswith("input_ids"):
                exp[k + "_off"] = v
        diff = max(float(np.abs(on["logits_%d" % i] - off["logits_%d" % i]).max()) for i in range(2))
        assert diff > 0.1, (name, "the adapter hardly changes the logits", diff)
        save_file(exp, os.path.join(out, "expected.safetensors"),
                  metadata={"producer": "scripts/fixtures_lora.py", "peft": peft.__version__,
                            "transformers": transformers.__version__, "torch": torch.__version__,
                            "compute": "float32 eager CPU", "rank": str(RANK), "alpha": str(ALPHA),
                            "use_rslora": str(name == "tiny-qwen3"),
                            "suffix _off": "adapter disabled (PEFT disable_adapter)"})
        log("%s/lora: %d bytes, max |logit change| from the adapter %.3f" % (name, dir_size(out), diff))


def check(adapter_dir, model_dir):
    """Loads `adapter_dir` in PEFT on the tiny model at `model_dir` and compares with its lora fixture."""
    torch = torch_or_die()
    import peft
    from safetensors.numpy import load_file

    name = os.path.basename(os.path.normpath(model_dir))
    base = load_base(torch, name)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    exp = load_file(os.path.join(FIX, name, "lora", "expected.safetensors"))
    worst = 0.0
    for i in range(2):
        ids = exp["input_ids_%d" % i].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        worst = max(worst, float(np.abs(logits - exp["logits_%d" % i]).max()))
    print(json.dumps({"adapter": adapter_dir, "model": name, "max_abs_diff": worst}))
    if worst > 1e-5:
        sys.exit("PEFT's logits with %s differ from the fixture by %g" % (adapter_dir, worst))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
