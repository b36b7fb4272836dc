//! Training: the optimizer (AdamW on the GPU, global-norm clipping, gradient-accumulation scaling) and
//! learning-rate schedules. Objectives, checkpoints and the run loop build on these.

pub mod activations;
pub mod batch;
pub mod lora_grads;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use activations::{Activations, Gradients, TrainShape};
pub use batch::{TrainBatch, TrainSequence};
pub use lora_grads::LoraGrads;
pub use optim::{AdamW, AdamWConfig, AdamWState, GradNorm, ParamSpec, ParamState};
pub use schedule::{Schedule, SchedulerType};
pub use sft::{MemoryReport, SftOptions, SftTrainer, StepMetrics};
