#!/usr/bin/env python3
"""Write tests/fixtures/sft-data/smollm2-trl.json: how TRL's SFTTrainer tokenizes the SFT data files in
tests/fixtures/sft-data/ with SmolLM2-135M-Instruct's tokenizer, the independent reference for babelrl's
`load_sft_jsonl` (engine/tests/inference/train_data.rs).

How to run (needs trl, transformers, datasets and gguf; CI does not run this):
    /root/.venvs/fixtures/bin/python scripts/sft_data_fixture.py

For each data file and each non-blank line (1-based `line`), it records TRL's `input_ids` and `labels`
(-100 where no loss is taken: the prompt of prompt-completion lines; none on `messages` lines, which TRL
trains on as whole conversations). The
tokenizer is transformers' rebuilt from the GGUF in $BABELRL_CACHE/models (as scripts/make_fixtures.py
does); the trainer's model is a tiny random Llama with SmolLM2's vocabulary (tokenization does not
depend on it). TRL tokenizes prompt and completion together and starts the completion where the two
tokenizations part; babelrl tokenizes them separately, which agrees whenever the boundary is a token
boundary, as on these lines.
"""

import json
import os
import tempfile

import datasets
import transformers
import trl
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "fixtures", "sft-data")
CACHE = os.environ.get("BABELRL_CACHE", os.path.expanduser("~/.cache/babelrl"))
MODEL_DIR = os.path.join(CACHE, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FILES = ["text.jsonl", "chat.jsonl", "chat_pc.jsonl"]


def read(path):
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                rows.append({k: row[k] for k in ("prompt", "completion", "messages") if k in row})
                lines.append(n)
    return rows, lines


def main():
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
    )
    out = {
        "producer": "scripts/sft_data_fixture.py",
        "tokenizer": f"$BABELRL_CACHE/models/smollm2-135m-instruct/{GGUF}",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "datasets": datasets.__version__},
        "eos_token_id": tok.eos_token_id,
        "files": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            rows, lines = read(os.path.join(DATA, name))
            args = trl.SFTConfig(output_dir=tmp, report_to=[], max_length=None, use_cpu=True, bf16=False)
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                     processing_class=tok)
            got = []
            for line, ex in zip(lines, trainer.train_dataset):
                got.append({"line": line, "input_ids": ex["input_ids"], "labels": ex["labels"]})
            out["files"][name] = got
    with open(os.path.join(DATA, "smollm2-trl.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
