//! GRPO's objective as pure functions, matching TRL 1.16's `GRPOTrainer`: group-relative advantages, the
//! loss mask, and the clipped-surrogate + KL loss of a micro-batch with its gradient with respect to each
//! completion token's log-prob (`loss_type` grpo, bnpo, dr_grpo, dapo) and TRL's metrics. No model and no
//! GPU here: the trainer takes `logp = −nll` from the training walk ([`completion_logp`]) and hands the
//! gradient back as its `token_grad` ([`nll_grad`]: `d loss / d nll = −d loss / d logp`).
//! `tests/fixtures/grpo-loss-reference.json` (scripts/fixtures_grpo_loss.py, TRL's own `_compute_loss`)
//! checks every loss type against TRL.

pub mod advantages;
pub mod data;
pub mod generation;
pub mod layout;
pub mod loss;
pub mod metrics;
pub mod routing;
pub mod template;
pub mod trainer;

pub use advantages::{STD_EPSILON, ScaleRewards, advantages};
pub use data::{GrpoPrompt, PromptEncoder, PromptOrder, load_grpo_prompts};
pub use layout::{completion_lengths, completion_logp, completion_mask, nll_grad};
pub use loss::{GrpoLossConfig, LossInputs, LossOutput, LossType, clipped_surrogate, grpo_loss, kl_term};
pub use metrics::LossMetrics;
pub use routing::{LanguageRouter, RoutedRollout, route_stats};
pub use template::{DEFAULT_TEMPLATE, PromptTemplate, language_name};
pub use trainer::{GrpoOptions, GrpoPhase, GrpoStepMetrics, GrpoTrainer, Rollout};
