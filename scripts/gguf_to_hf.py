#!/usr/bin/env python3
"""gguf_to_hf.py - write a GGUF decoder as a Hugging Face folder (config.json, model.safetensors in f32,
tokenizer files, chat template), for the jobs that need one: a reward model trained with babelrl names its
base by path in adapter_config.json, and PEFT/transformers can only load a folder as that base.

    python scripts/gguf_to_hf.py [GGUF] [OUT]
        GGUF  default: the cached SmolLM2-135M-Instruct ($BABELRL_CACHE, default ~/.cache/babelrl)
        OUT   default: $BABELRL_CACHE/models/smollm2-135m-instruct-hf

Needs transformers, torch and gguf (the fixtures venv). transformers dequantizes the GGUF blocks and undoes
llama's Q/K permutation; the weights are saved unquantized (SmolLM2-135M: 540 MB).
"""

import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

cache = os.environ.get("BABELRL_CACHE", os.path.expanduser("~/.cache/babelrl"))
default = os.path.join(cache, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
gguf = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else default)
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(cache, "models", "smollm2-135m-instruct-hf")
if not os.path.isfile(gguf):
    sys.exit(f"gguf_to_hf.py: {gguf}: no such file (scripts/fetch_models.sh fetches the default model)")

folder, name = os.path.split(gguf)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
# A model loaded from GGUF refuses save_pretrained: copy its weights into a plain one of the same config.
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name), dtype=torch.float32)
model.load_state_dict(loaded.state_dict())
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(f"wrote {out} ({model.config.architectures[0]}, {sum(p.numel() for p in model.parameters()):,} parameters)")
