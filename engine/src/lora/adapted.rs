//! A decoder with its LoRA adapter switched on or off for the calls made through it: what generation
//! and teacher forcing run. Off is the reference policy (the same base, no second copy of the model).

use crate::Result;
use crate::gpu::Tensor;
use crate::gpu::cpu_ref::TokenInfo;
use crate::lora::Adapter;
use crate::model::{Decoder, DecoderConfig, KvCache};

/// The decoder plus an adapter that is on (`Some`) or off (`None`). Every forward pass made through
/// it uses exactly that setting, so a policy pass and a reference pass are two values, not a mode
/// of the model that one might forget to reset. `&Decoder` converts into the adapter-off view, so
/// functions taking `impl Into<Adapted>` accept a bare decoder as before.
#[derive(Clone, Copy)]
pub struct Adapted<'a> {
    pub decoder: &'a Decoder,
    pub adapter: Option<&'a Adapter>,
}

impl<'a> From<&'a Decoder> for Adapted<'a> {
    fn from(decoder: &'a Decoder) -> Self {
        Adapted { decoder, adapter: None }
    }
}

impl Decoder {
    /// This decoder with `adapter` on: its forward passes add the adapter's term.
    pub fn with_adapter<'a>(&'a self, adapter: &'a Adapter) -> Adapted<'a> {
        Adapted { decoder: self, adapter: Some(adapter) }
    }

    /// This decoder with the adapter given (`Some`) or the base alone (`None`), chosen per call.
    pub fn adapted<'a>(&'a self, adapter: Option<&'a Adapter>) -> Adapted<'a> {
        Adapted { decoder: self, adapter }
    }
}

impl<'a> Adapted<'a> {
    /// [`Decoder::forward_with`] with this view's adapter setting.
    pub fn forward(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
    ) -> Result<Tensor> {
        self.decoder.forward_with(cache, tokens, info, out_rows, self.adapter)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &'a DecoderConfig {
        self.decoder.config()
    }

    /// See [`Decoder::max_context`].
    pub fn max_context(&self) -> usize {
        self.decoder.max_context()
    }

    /// See [`Decoder::max_logit_rows`].
    pub fn max_logit_rows(&self) -> usize {
        self.decoder.max_logit_rows()
    }

    /// See [`Decoder::new_cache`].
    pub fn new_cache(&self, slots: usize, ctx: usize) -> Result<KvCache> {
        self.decoder.new_cache(slots, ctx)
    }

    /// See [`Decoder::copy_cache_prefix`].
    pub fn copy_cache_prefix(&self, cache: &KvCache, from: usize, to: &[usize], len: usize) -> Result<()> {
        self.decoder.copy_cache_prefix(cache, from, to, len)
    }

    /// See [`Decoder::read_logits`].
    pub fn read_logits(&self, logits: &Tensor) -> Result<Vec<f32>> {
        self.decoder.read_logits(logits)
    }

    /// See [`Decoder::logprobs_of`].
    pub fn logprobs_of(&self, logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        self.decoder.logprobs_of(logits, targets)
    }
}
