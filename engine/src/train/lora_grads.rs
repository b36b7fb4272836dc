//! Gradients of a LoRA adapter: dA and dB for every adapted (layer, projection), mirroring the adapter,
//! f32 on the GPU. Only trainable parameters have a gradient (the frozen base has none). The backward
//! walk adds into them, so they accumulate over micro-batches until [`LoraGrads::zero`].

use crate::Result;
use crate::gpu::{Batch, Gpu, Tensor};
use crate::lora::{Adapter, Target, peft_tensor_name};
use crate::train::ParamSpec;

/// dA (r, in) and dB (out, r) of one projection.
pub struct PairGrad {
    pub da: Tensor,
    pub db: Tensor,
}

/// Gradients of every factor of one adapter.
pub struct LoraGrads {
    /// `pairs[layer][target.index()]`, `Some` where the adapter is.
    pairs: Vec<[Option<PairGrad>; 7]>,
}

impl LoraGrads {
    /// Zeroed gradients shaped as `adapter`.
    pub fn new(gpu: &Gpu, adapter: &Adapter) -> Result<LoraGrads> {
        let mut pairs: Vec<[Option<PairGrad>; 7]> =
            (0..adapter.layers()).map(|_| Default::default()).collect();
        for (layer, row) in pairs.iter_mut().enumerate() {
            for &target in &adapter.config().targets {
                let p = adapter.pair(layer, target).expect("every target of the config is adapted");
                let name = |ab: char| format!("grad.{}", peft_tensor_name(layer, target, ab));
                row[target.index()] = Some(PairGrad {
                    da: gpu.zeros(&name('A'), &p.a.shape)?,
                    db: gpu.zeros(&name('B'), &p.b.shape)?,
                });
            }
        }
        Ok(LoraGrads { pairs })
    }

    /// dA and dB of `target` in `layer`, if adapted.
    pub fn pair(&self, layer: usize, target: Target) -> Option<&PairGrad> {
        self.pairs.get(layer)?[target.index()].as_ref()
    }

    /// Records zeroing every gradient (before a new accumulation).
    pub fn zero(&self, batch: &mut Batch<'_>) {
        for g in self.pairs.iter().flatten().flatten() {
            batch.clear(&g.da.buffer);
            batch.clear(&g.db.buffer);
        }
    }

    /// Every (parameter, gradient) pair, layer by layer, targets in [`Target::ALL`] order, A before B:
    /// the order of [`LoraGrads::param_specs`], which the optimizer takes.
    pub fn with_params<'a>(&'a self, adapter: &'a Adapter) -> Vec<(&'a Tensor, &'a Tensor)> {
        let mut out = Vec::new();
        for (layer, row) in self.pairs.iter().enumerate() {
            for (i, g) in row.iter().enumerate() {
                let Some(g) = g else { continue };
                let p = adapter.pair(layer, Target::ALL[i]).expect("gradients mirror the adapter");
                out.push((&p.a, &g.da));
                out.push((&p.b, &g.db));
            }
        }
        out
    }

    /// The optimizer's parameter list: PEFT's tensor names, sizes, weight decay on every factor (as
    /// transformers, which exempts only biases and norm weights).
    pub fn param_specs(adapter: &Adapter) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for layer in 0..adapter.layers() {
            for &target in &Target::ALL {
                let Some(p) = adapter.pair(layer, target) else { continue };
                for (ab, t) in [('A', &p.a), ('B', &p.b)] {
                    out.push(ParamSpec {
                        name: peft_tensor_name(layer, target, ab),
                        len: t.len(),
                        weight_decay: true,
                    });
                }
            }
        }
        out
    }

    /// Bytes of GPU memory the gradients hold.
    pub fn bytes(&self) -> u64 {
        self.pairs.iter().flatten().flatten().map(|g| g.da.buffer.size() + g.db.buffer.size()).sum()
    }
}
