//! babelrl: an embeddable training engine for language models, with WGSL kernels through wgpu and
//! sandboxed WebAssembly reward and router plugins through wasmtime.

pub mod error;
pub mod eval;
pub mod generate;
pub mod gpu;
pub mod lora;
pub mod model;
pub mod plot;
pub mod plugin;
pub mod text;
pub mod train;

pub use error::{Error, Result};
