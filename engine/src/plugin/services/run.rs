//! [`RunServices`]: `embed` from the run's sentence encoder, loaded on the first call when it is the
//! default one (runs without embedding plugins pay nothing), and `reward-model-score` from the run's
//! reward model; long lists go to the models in bounded chunks, and every failure reaches the plugin
//! as a string (and the log).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::gpu::Gpu;
use crate::model::{Encoder, RewardModel};

use super::HostServices;

/// Most texts embedded in one call to the encoder (a plugin may send up to `max_embed_texts`).
pub const EMBED_CHUNK: usize = 256;
/// Most pairs scored in one call to the reward model.
pub const SCORE_CHUNK: usize = 64;

/// Where the default encoder lives: `<cache>/models/multilingual-e5-small` (scripts/fetch_models.sh).
pub fn default_encoder_dir() -> PathBuf {
    crate::model::cache_dir().join("models").join("multilingual-e5-small")
}

/// The run's encoder: loaded already, or a folder to load on the first `embed`.
enum EncoderSlot {
    None,
    Loaded(Arc<Encoder>),
    /// The default encoder, loaded on first use and kept; a failed load is tried again at the next
    /// `embed` (a transient failure, e.g. GPU memory taken by a training step, does not last the run).
    Lazy {
        gpu: Arc<Gpu>,
        dir: PathBuf,
        cell: OnceLock<Arc<Encoder>>,
    },
}

/// [`HostServices`] of a run or a tool: `embed` from a sentence encoder, `reward-model-score` from a
/// scalar-head reward model; each refused as by [`super::NoServices`] when absent.
pub struct RunServices {
    encoder: EncoderSlot,
    reward_model: Option<Arc<RewardModel>>,
}

impl std::fmt::Debug for RunServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encoder = match &self.encoder {
            EncoderSlot::None => "none".to_string(),
            EncoderSlot::Loaded(e) => format!("{e:?}"),
            EncoderSlot::Lazy { dir, cell, .. } => {
                format!(
                    "{} ({})",
                    dir.display(),
                    if cell.get().is_some() { "loaded" } else { "not loaded yet" }
                )
            }
        };
        f.debug_struct("RunServices")
            .field("encoder", &encoder)
            .field("reward_model", &self.reward_model)
            .finish()
    }
}

impl Default for RunServices {
    fn default() -> Self {
        Self::new()
    }
}

impl RunServices {
    /// Neither service (add them with the `with_*` methods).
    pub fn new() -> Self {
        RunServices { encoder: EncoderSlot::None, reward_model: None }
    }

    /// Serves `embed` from `encoder`.
    pub fn with_encoder(mut self, encoder: Arc<Encoder>) -> Self {
        self.encoder = EncoderSlot::Loaded(encoder);
        self
    }

    /// Serves `embed` from the encoder in `dir`, loaded on the first call; a folder that does not load
    /// fails that call and every later one with the same message (saying to run
    /// scripts/fetch_models.sh when `dir` does not exist).
    pub fn with_lazy_encoder(mut self, gpu: Arc<Gpu>, dir: PathBuf) -> Self {
        self.encoder = EncoderSlot::Lazy { gpu, dir, cell: OnceLock::new() };
        self
    }

    /// Serves `reward-model-score` from `model`.
    pub fn with_reward_model(mut self, model: Arc<RewardModel>) -> Self {
        self.reward_model = Some(model);
        self
    }

    /// The encoder, if one is loaded (a lazy one only after its first use).
    pub fn encoder(&self) -> Option<&Arc<Encoder>> {
        match &self.encoder {
            EncoderSlot::Loaded(e) => Some(e),
            EncoderSlot::Lazy { cell, .. } => cell.get(),
            EncoderSlot::None => None,
        }
    }

    /// The reward model, if any.
    pub fn reward_model(&self) -> Option<&Arc<RewardModel>> {
        self.reward_model.as_ref()
    }

    fn load_encoder(gpu: &Arc<Gpu>, dir: &Path) -> Result<Arc<Encoder>, String> {
        if !dir.join("config.json").exists() {
            return Err(format!(
                "the default encoder is not in the cache ({} is missing): run scripts/fetch_models.sh, or \
                 name a BERT / XLM-R folder with `[encoder] path` in the run file (`--encoder DIR` for \
                 `babelrl plugin`)",
                dir.display()
            ));
        }
        let t = std::time::Instant::now();
        let e = Encoder::load(Arc::clone(gpu), dir)
            .map_err(|e| format!("loading the encoder {}: {e}", dir.display()))?;
        log::info!("encoder {} loaded on first use in {:.2} s", dir.display(), t.elapsed().as_secs_f64());
        Ok(Arc::new(e))
    }

    fn encoder_for_embed(&self) -> Result<&Encoder, String> {
        match &self.encoder {
            EncoderSlot::None => Err(super::NoServices.embed(&[]).unwrap_err()),
            EncoderSlot::Loaded(e) => Ok(e),
            EncoderSlot::Lazy { gpu, dir, cell } => {
                if let Some(e) = cell.get() {
                    return Ok(e);
                }
                let loaded = Self::load_encoder(gpu, dir).inspect_err(|e| log::error!("embed: {e}"))?;
                // Another thread may have loaded it meanwhile: keep whichever came first.
                Ok(cell.get_or_init(|| loaded))
            }
        }
    }
}

impl HostServices for RunServices {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let encoder = self.encoder_for_embed()?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_CHUNK) {
            out.extend(encoder.embed(chunk).map_err(|e| {
                let e = format!("embed: {e}");
                log::warn!("{e}");
                e
            })?);
        }
        Ok(out)
    }

    fn reward_model_score(&self, prompts: &[String], completions: &[String]) -> Result<Vec<f32>, String> {
        let Some(rm) = &self.reward_model else {
            return super::NoServices.reward_model_score(prompts, completions);
        };
        if prompts.len() != completions.len() {
            return Err(format!("{} prompts but {} completions", prompts.len(), completions.len()));
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (p, c) in prompts.chunks(SCORE_CHUNK).zip(completions.chunks(SCORE_CHUNK)) {
            out.extend(rm.score(p, c).map_err(|e| {
                let e = format!("reward-model-score: {e}");
                log::warn!("{e}");
                e
            })?);
        }
        Ok(out)
    }
}
