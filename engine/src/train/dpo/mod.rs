//! Direct preference optimisation (DPO) of a LoRA adapter, as TRL 1.16's `DPOTrainer`: the sigmoid (and
//! robust) loss on summed completion log-probs against the reference policy — the same base with the
//! adapter switched off, no second model — and the trainer that runs it through the training walk.
//! `tests/fixtures/tiny-qwen2/lora/dpo-expected.safetensors` (scripts/fixtures_dpo.py) checks the loss, the
//! metrics and every LoRA gradient against torch + PEFT.

pub mod data;
pub mod loss;
pub mod trainer;

pub use data::{load_dpo_pairs, tokenize_pair};
pub use loss::{DpoLossConfig, DpoLossInputs, DpoLossOutput, DpoLossType, DpoMetrics, dpo_loss, pair_loss};
pub use trainer::{
    DpoOptions, DpoPair, DpoStepMetrics, DpoTrainer, PairPass, RefLogps, pair_batch, pair_pass,
    reference_logps, sequence_logps,
};
