//! Text: tokenizers (from `tokenizer.json` or rebuilt from GGUF metadata) and chat templates.

pub mod chat;
mod gguf_vocab;
mod strftime;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use tokenizer::Tokenizer;
