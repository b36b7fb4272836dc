//! A LoRA adapter on the GPU: A (r, in) and B (out, r) in f32 for every adapted (layer, projection),
//! initialised as PEFT does or uploaded from host values, and read back for saving.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use crate::gpu::kernels_lora::{LoraShape, OutputSlice};
use crate::gpu::{Batch, Gpu, Tensor};
use crate::lora::config::{LoraConfig, Target};
use crate::model::DecoderConfig;
use crate::{Error, Result};

/// The two factors of one adapted projection, on the GPU.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// (r, in) f32.
    pub a: Tensor,
    /// (out, r) f32.
    pub b: Tensor,
}

/// Host values of one adapted projection (row-major, f32).
#[derive(Debug, Clone, PartialEq)]
pub struct HostPair {
    pub layer: usize,
    pub target: Target,
    /// (r, in).
    pub a: Vec<f32>,
    /// (out, r).
    pub b: Vec<f32>,
}

/// A LoRA adapter for one decoder shape. It never modifies the base weights: the decoder adds its
/// term when a forward pass runs with it switched on (see [`crate::lora::Adapted`]).
pub struct Adapter {
    gpu: Arc<Gpu>,
    config: LoraConfig,
    /// The model shape the adapter was made for (layers and projection sizes are checked against it).
    model: DecoderConfig,
    /// `pairs[layer][target.index()]`, `Some` for the adapted targets.
    pairs: Vec<[Option<LoraPair>; 7]>,
}

impl Adapter {
    /// A fresh adapter with PEFT's initialisation: A Kaiming-uniform with a = √5 (torch's `nn.Linear`
    /// default, i.e. U(−1/√in, 1/√in)), B zero, so the adapted model starts equal to the base. A is
    /// drawn from a ChaCha8 stream seeded with `seed`, layer by layer, targets in [`Target::ALL`] order.
    pub fn init(gpu: Arc<Gpu>, config: LoraConfig, model: &DecoderConfig, seed: u64) -> Result<Adapter> {
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut host = Vec::new();
        for layer in 0..model.layers {
            for &target in &config.targets {
                let (out, inp) = target.shape(model);
                let bound = 1.0 / (inp as f32).sqrt();
                let a = (0..config.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                host.push(HostPair { layer, target, a, b: vec![0.0; out * config.r] });
            }
        }
        Adapter::from_host(gpu, config, model, &host)
    }

    /// Uploads host values; `pairs` must hold exactly one entry per (layer, target) of the config,
    /// each of the right shape.
    pub fn from_host(
        gpu: Arc<Gpu>,
        config: LoraConfig,
        model: &DecoderConfig,
        pairs: &[HostPair],
    ) -> Result<Adapter> {
        config.validate()?;
        let r = config.r;
        let mut slots: Vec<[Option<LoraPair>; 7]> = (0..model.layers).map(|_| Default::default()).collect();
        for p in pairs {
            let name = format!("layers.{}.{}", p.layer, p.target.peft_name());
            if p.layer >= model.layers || !config.targets_module(p.target) {
                return Err(Error::Input(format!(
                    "LoRA {name}: not part of an adapter on {} layers targeting {:?}",
                    model.layers, config.targets
                )));
            }
            let (out, inp) = p.target.shape(model);
            if p.a.len() != r * inp || p.b.len() != out * r {
                return Err(Error::Shape {
                    name: format!("LoRA {name} (A, B)"),
                    expected: vec![r * inp, out * r],
                    found: vec![p.a.len(), p.b.len()],
                });
            }
            let slot = &mut slots[p.layer][p.target.index()];
            if slot.is_some() {
                return Err(Error::Input(format!("LoRA {name}: given twice")));
            }
            *slot = Some(LoraPair {
                a: gpu.upload_f32(&format!("lora.{name}.A"), &p.a, &[r, inp])?,
                b: gpu.upload_f32(&format!("lora.{name}.B"), &p.b, &[out, r])?,
            });
        }
        for (layer, row) in slots.iter().enumerate() {
            for &t in &config.targets {
                if row[t.index()].is_none() {
                    return Err(Error::Input(format!(
                        "LoRA layers.{layer}.{}: missing from the adapter's values",
                        t.peft_name()
                    )));
                }
            }
        }
        Ok(Adapter { gpu, config, model: model.clone(), pairs: slots })
    }

    /// The adapter's hyper-parameters.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The device the adapter lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The model shape the adapter was made for.
    pub fn model_config(&self) -> &DecoderConfig {
        &self.model
    }

    /// Number of decoder layers the adapter covers.
    pub fn layers(&self) -> usize {
        self.pairs.len()
    }

    /// Bytes of GPU memory the factors hold.
    pub fn bytes(&self) -> u64 {
        self.pairs.iter().flatten().flatten().map(|p| p.a.buffer.size() + p.b.buffer.size()).sum()
    }

    /// A and B of `target` in `layer`, if adapted.
    pub fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.pairs.get(layer)?[target.index()].as_ref()
    }

    /// Errors unless the adapter was made for a model of `model`'s shapes, on the same device as `gpu`.
    pub fn check_fits(&self, gpu: &Arc<Gpu>, model: &DecoderConfig) -> Result<()> {
        if !Arc::ptr_eq(gpu, &self.gpu) {
            return Err(Error::Input("the LoRA adapter lives on another device than the model".into()));
        }
        if self.model.layers != model.layers {
            return Err(Error::Input(format!(
                "the LoRA adapter has {} layers but the model {}",
                self.model.layers, model.layers
            )));
        }
        for &t in &self.config.targets {
            if t.shape(&self.model) != t.shape(model) {
                return Err(Error::Input(format!(
                    "the LoRA adapter's {} is (out, in) = {:?} but the model's is {:?}",
                    t.peft_name(),
                    t.shape(&self.model),
                    t.shape(model)
                )));
            }
        }
        Ok(())
    }

    /// Records the adapter's term for `target` of `layer`, if adapted: `y[:, slice] += scale · B (A x)`,
    /// using `u` (at least t · r floats) for A x.
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward(
        &self,
        b: &mut Batch<'_>,
        layer: usize,
        target: Target,
        x: &Tensor,
        u: &Tensor,
        y: &Tensor,
        t: usize,
        out: OutputSlice,
    ) -> Result<()> {
        let Some(pair) = self.pair(layer, target) else { return Ok(()) };
        let (n, k) = target.shape(&self.model);
        let shape = LoraShape { t, k, r: self.config.r, n };
        b.lora_forward(x, &pair.a, &pair.b, self.config.scale(), u, y, shape, out)
    }

    /// Reads every A and B back to the host, layer by layer, targets in [`Target::ALL`] order.
    pub fn to_host(&self) -> Result<Vec<HostPair>> {
        let mut out = Vec::new();
        for (layer, row) in self.pairs.iter().enumerate() {
            for &target in &self.config.targets {
                let pair = row[target.index()].as_ref().expect("every target is filled");
                out.push(HostPair {
                    layer,
                    target,
                    a: self.gpu.read_f32(&pair.a)?,
                    b: self.gpu.read_f32(&pair.b)?,
                });
            }
        }
        Ok(out)
    }
}
