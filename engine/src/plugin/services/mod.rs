//! The engine-side services a plugin may call (`embed`, `reward-model-score`), behind a trait so the
//! plugin host does not depend on how (or whether) the run has an encoder or a reward model; and
//! [`RunServices`], which serves both from a run's encoder and reward model.

mod run;

pub use run::{EMBED_CHUNK, RunServices, SCORE_CHUNK, default_encoder_dir};

/// Services the engine offers to plugins. Implemented over the GPU encoder and reward model by the
/// training loop; [`NoServices`] is the default for runs (and tools) without them.
///
/// Errors are plain strings: they are handed to the plugin as the `err` of the WIT `result`, and the
/// plugin decides whether to fail or fall back.
pub trait HostServices: Send + Sync {
    /// L2-normalised sentence embeddings, one vector per text, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String>;

    /// Scalar reward-model scores of `(prompts[i], completions[i])` pairs, in order. The two slices
    /// have the same length (the host checks before calling).
    fn reward_model_score(&self, prompts: &[String], completions: &[String]) -> Result<Vec<f32>, String>;
}

/// No encoder and no reward model: every call fails with a message saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoServices;

impl HostServices for NoServices {
    fn embed(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Err("no encoder configured (give the run file an [encoder] table, or `--encoder DIR` to `babelrl \
             plugin`, to use `embed`)"
            .into())
    }

    fn reward_model_score(&self, _prompts: &[String], _completions: &[String]) -> Result<Vec<f32>, String> {
        Err("no reward model configured (give the run file a [reward_model] table with `path`, or \
             `--reward-model DIR` to `babelrl plugin`)"
            .into())
    }
}

/// [`HostServices`] over a GPU sentence encoder: `embed` runs [`crate::model::Encoder::embed`];
/// `reward-model-score` is refused as by [`NoServices`] (no reward model attached).
#[derive(Debug, Clone)]
pub struct EncoderServices {
    encoder: std::sync::Arc<crate::model::Encoder>,
}

impl EncoderServices {
    /// Serves `embed` from `encoder`.
    pub fn new(encoder: std::sync::Arc<crate::model::Encoder>) -> Self {
        EncoderServices { encoder }
    }

    /// The encoder behind `embed`.
    pub fn encoder(&self) -> &crate::model::Encoder {
        &self.encoder
    }
}

impl HostServices for EncoderServices {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        self.encoder.embed(texts).map_err(|e| e.to_string())
    }

    fn reward_model_score(&self, prompts: &[String], completions: &[String]) -> Result<Vec<f32>, String> {
        NoServices.reward_model_score(prompts, completions)
    }
}
