//! Models: configuration, weight loading (safetensors, GGUF), the decoder, the sentence encoder and
//! scalar-head reward models.

pub mod config;
pub mod decoder;
pub mod encoder;
mod encoder_config;
pub mod gguf;
mod loader;
pub mod quant;
pub mod reward_model;
pub mod weights;

pub use config::{Arch, DecoderConfig, cache_dir};
pub use decoder::{Decoder, KvCache};
pub use encoder::{Encoder, EncoderArch, EncoderConfig, EncoderOptions};
pub use loader::{LanguageModel, LoadOptions, load_language_model, load_language_model_with};
pub use reward_model::{RewardModel, RmPrompt};
