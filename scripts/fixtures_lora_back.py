"""PEFT's logits with adapters babelrl trained and saved, for make_fixtures.py: the babelrl -> PEFT half of
the LoRA round trip (the PEFT -> babelrl half is fixtures_lora.py).

Run through scripts/make_fixtures.py (target `lora-back`, after `tiny`, `lora` and `train`):
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py lora-back
It first runs the ignored Rust test that writes the adapters (needs cargo; skip that step with
BABELRL_LORA_BACK_NO_CARGO=1 to reuse the folders already there):
    cargo test -p babelrl --test inference lora_peft::write_babelrl_saved_adapters -- --ignored --exact
which, for each tests/fixtures/tiny-{qwen2,qwen3,llama}/, loads the committed PEFT adapter from lora/, trains
it with babelrl's SftTrainer for three AdamW steps on the batch of lora/train-expected.safetensors and saves
it with Adapter::save_peft to lora/babelrl-saved/ (adapter_config.json, adapter_model.safetensors).
Then, for each model, it loads the base model (float32, eager attention, CPU) and that folder with
peft.PeftModel.from_pretrained, checks that PEFT took every tensor of the file as it is (the adapter's state
dict has exactly the file's keys and bit-equal values; no missing-keys warning; r, alpha, rsLoRA and the
seven target modules as the config says) and writes lora/babelrl-saved/peft-logits.safetensors:
    input_ids_0, input_ids_1   int64 [T]      the two sequences of lora/expected.safetensors
    logits_0, logits_1         float32 [T, V] PEFT's logits at every position
with the library versions and the sha256 of adapter_model.safetensors (adapter_sha256) in the metadata.
engine/tests/inference/lora_peft.rs (babelrl_saved_adapters_give_the_same_logits_in_peft) checks that
babelrl's logits with the saved adapter are these.
"""

import hashlib
import os
import subprocess
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_lora import ALPHA, RANK, TARGETS, load_base  # noqa: E402
from make_fixtures import FIX, ROOT, TINY, log, torch_or_die  # noqa: E402

SAVED = "babelrl-saved"
RUST_TEST = "lora_peft::write_babelrl_saved_adapters"
CARGO = ["cargo", "test", "-p", "babelrl", "--test", "inference", RUST_TEST, "--", "--ignored", "--exact"]


def write_adapters_with_babelrl():
    """Runs the Rust test that trains and saves the adapters (exits with the command on failure)."""
    if os.environ.get("BABELRL_LORA_BACK_NO_CARGO") == "1":
        log("lora-back: BABELRL_LORA_BACK_NO_CARGO=1, using the babelrl-saved folders already there")
        return
    log("lora-back: " + " ".join(CARGO))
    try:
        done = subprocess.run(CARGO, cwd=ROOT)
    except FileNotFoundError:
        sys.exit("make_fixtures.py lora-back: cargo is not on PATH (it runs `%s` in %s)" % (" ".join(CARGO), ROOT))
    if done.returncode != 0:
        sys.exit("make_fixtures.py lora-back: `%s` failed (exit %d)" % (" ".join(CARGO), done.returncode))


def check_loaded(torch, model, name, saved):
    """PEFT holds exactly the file's tensors, bit for bit, with the config's rank, scale and modules."""
    import peft
    from safetensors.torch import load_file

    file = load_file(os.path.join(saved, "adapter_model.safetensors"))
    held = peft.get_peft_model_state_dict(model)
    if set(held) != set(file):
        sys.exit("%s: PEFT's adapter state dict and adapter_model.safetensors differ: only in PEFT %s, only in the "
                 "file %s" % (saved, sorted(set(held) - set(file))[:5], sorted(set(file) - set(held))[:5]))
    for k, v in file.items():
        if held[k].dtype != v.dtype or not torch.equal(held[k], v):
            sys.exit("%s: PEFT holds %s not as the file has it" % (saved, k))
    cfg = model.peft_config["default"]
    rslora = name == "tiny-qwen3"
    if (cfg.r, cfg.lora_alpha, cfg.use_rslora, set(cfg.target_modules)) != (RANK, ALPHA, rslora, set(TARGETS)):
        sys.exit("%s: PEFT read r=%s alpha=%s use_rslora=%s target_modules=%s from adapter_config.json, expected "
                 "r=%d alpha=%d use_rslora=%s %s" % (saved, cfg.r, cfg.lora_alpha, cfg.use_rslora,
                                                     sorted(cfg.target_modules), RANK, ALPHA, rslora, TARGETS))
    scale = ALPHA / (RANK ** 0.5 if rslora else RANK)
    n = 0
    for mname, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            assert module.scaling["default"] == scale, (mname, module.scaling, scale)
            n += 1
    if 2 * n != len(file):
        sys.exit("%s: %d LoRA layers in PEFT's model for %d tensors in the file" % (saved, n, len(file)))
    return n


def make_lora_back():
    torch = torch_or_die()
    import peft
    import transformers
    from safetensors.numpy import load_file, save_file

    for name in TINY:
        if not os.path.exists(os.path.join(FIX, name, "lora", "train-expected.safetensors")):
            sys.exit("make_fixtures.py lora-back: run the 'tiny', 'lora' and 'train' targets first "
                     "(needs tests/fixtures/%s/lora/train-expected.safetensors)" % name)
    write_adapters_with_babelrl()
    for name in TINY:
        saved = os.path.join(FIX, name, "lora", SAVED)
        weights = os.path.join(saved, "adapter_model.safetensors")
        if not os.path.exists(weights):
            sys.exit("make_fixtures.py lora-back: %s is missing: run `%s`" % (weights, " ".join(CARGO)))
        with open(weights, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        base = load_base(torch, name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = peft.PeftModel.from_pretrained(base, saved).eval()
        for w in caught:
            if "keys" in str(w.message):
                sys.exit("%s: PEFT warned while loading: %s" % (saved, w.message))
        layers = check_loaded(torch, model, name, saved)
        exp = load_file(os.path.join(FIX, name, "lora", "expected.safetensors"))
        out = {}
        worst = 0.0
        for i in range(2):
            ids = exp["input_ids_%d" % i]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(ids[None, :], dtype=torch.long)).logits[0].float().numpy()
            out["input_ids_%d" % i] = ids.astype(np.int64)
            out["logits_%d" % i] = logits.astype(np.float32)
            worst = max(worst, float(np.abs(logits - exp["logits_%d" % i]).max()))
        if worst < 1e-3:
            sys.exit("%s: PEFT's logits with the trained adapter are within %g of the committed adapter's: did "
                     "the training move it?" % (saved, worst))
        save_file(out, os.path.join(saved, "peft-logits.safetensors"),
                  metadata={"producer": "scripts/fixtures_lora_back.py", "peft": peft.__version__,
                            "transformers": transformers.__version__, "torch": torch.__version__,
                            "compute": "float32 eager CPU, peft.PeftModel.from_pretrained(base, babelrl-saved)",
                            "adapter_sha256": sha, "adapter": "lora/babelrl-saved/adapter_model.safetensors",
                            "inputs": "input_ids_0/1 of lora/expected.safetensors"})
        log("%s/lora/%s: PEFT loaded all %d LoRA layers; logits moved by up to %.4f from the committed adapter's"
            % (name, SAVED, layers, worst))


if __name__ == "__main__":
    sys.exit(__doc__)
