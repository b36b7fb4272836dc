//! LoRA adapters: `W x + scale · B (A x)` on chosen projections of a frozen decoder, never merged into
//! the base; PEFT-compatible files; a per-call switch between the adapted model and the base.

mod adapted;
mod adapter;
mod config;
mod peft;

pub use adapted::Adapted;
pub use adapter::{Adapter, HostPair, LoraPair};
pub use config::{LoraConfig, Target};
pub use peft::{CONFIG_FILE, WEIGHTS_FILE, peft_tensor_name, write_atomic};
