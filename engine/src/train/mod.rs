//! Training: the optimizer (AdamW on the GPU, global-norm clipping, gradient-accumulation scaling),
//! learning-rate schedules, the run file, SFT data and checkpoints, the GRPO objective (`grpo`), DPO
//! (`dpo`) and preference pairs (`pairs`). The run loops build on these.

pub mod activations;
pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod dpo;
pub mod grpo;
pub mod lora_grads;
pub mod optim;
pub mod pairs;
pub mod reward;
pub mod run_file;
pub mod schedule;
pub mod sft;

pub use activations::{Activations, Gradients, TrainShape};
pub use batch::{SharedPrefix, TrainBatch, TrainSequence};
pub use checkpoint::{
    CHECKPOINT_FORMAT, Checkpoint, ROUTER_STATE_FILE, TrainerState, latest_checkpoint, load_checkpoint,
    prune_checkpoints, save_checkpoint, save_checkpoint_with, save_checkpoint_with_files,
};
pub use data::{SftExample, load_sft_jsonl};
pub use lora_grads::LoraGrads;
pub use optim::{AdamW, AdamWConfig, AdamWState, GradNorm, ParamSpec, ParamState};
pub use pairs::{PairContent, PairOrigin, PairTexts, PreferencePair, read_pairs, render_pairs};
pub use reward::{
    RewardOptions, RewardPair, RewardStepMetrics, RewardTrainer, TokenizedPairs, bradley_terry,
    load_reward_adapter, reward_pad_id, save_reward_adapter, tokenize_reward_pairs,
};
pub use run_file::{
    EncoderSection, GrpoSection, LoraSection, ModelSection, OutputSection, RewardModelSection, RouterSection,
    RunFile, SFT_ADAPTER_DIR, ScheduleSection, SftSection, Stage, TrainLength,
};
pub use schedule::{Schedule, SchedulerType};
pub use sft::{MemoryReport, SftOptions, SftTrainer, StepMetrics};
