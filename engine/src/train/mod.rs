//! Training: the optimizer (AdamW on the GPU, global-norm clipping, gradient-accumulation scaling) and
//! learning-rate schedules. Objectives, checkpoints and the run loop build on these.

pub mod optim;
pub mod schedule;

pub use optim::{AdamW, AdamWConfig, AdamWState, GradNorm, ParamSpec, ParamState};
pub use schedule::{Schedule, SchedulerType};
