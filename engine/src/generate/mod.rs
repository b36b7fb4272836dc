//! Text generation: batched sampling over a KV cache, stop conditions, and teacher-forced log-probs.

mod generator;
mod sampler;

pub use generator::{
    Chunk, Completion, FinishReason, PREFILL_CHUNK, completion_logprobs, forward_chunked, generate,
};
pub use sampler::{SamplingConfig, sample};
