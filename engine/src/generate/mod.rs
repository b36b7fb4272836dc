//! Text generation: batched sampling over a KV cache, stop conditions, teacher-forced log-probs, and
//! best-of-n reranking with a reward model or reward plugins.

mod best_of;
mod generator;
mod sampler;

pub use best_of::{BestOf, BestOfPrompt, Judge, argmax, best_of_n};
pub use generator::{
    Chunk, Completion, FinishReason, LOGPROB_PACK_TOKENS, PREFILL_CHUNK, completion_logprobs,
    completion_logprobs_packed, forward_chunked, generate,
};
pub use sampler::{SamplingConfig, candidates, sample};
