//! Text generation: batched sampling over a KV cache, stop conditions, and teacher-forced log-probs.

mod generator;
mod sampler;

pub use generator::{
    Chunk, Completion, FinishReason, LOGPROB_PACK_TOKENS, PREFILL_CHUNK, completion_logprobs,
    completion_logprobs_packed, forward_chunked, generate,
};
pub use sampler::{SamplingConfig, candidates, sample};
