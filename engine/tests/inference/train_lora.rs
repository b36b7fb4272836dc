//! The training walk against torch + PEFT: for tiny random Qwen2, Qwen3 (rsLoRA) and Llama with a LoRA
//! adapter on all seven projections (tests/fixtures/tiny-*/lora/train-expected.safetensors, made by
//! scripts/fixtures_train.py), the completion-only SFT loss of one batch of three sequences, every LoRA
//! gradient, and the loss, gradient norm and parameters through three AdamW steps with clipping and a
//! linear warmup. A failure names the tensor. With gradient checkpointing the gradients are bit for bit
//! those without it.
//!
//! Tolerance: the tiny models' weights are f16-exact (the fixtures store what babelrl stores), so both
//! sides compute the same function in f32 and differ only by summation order: the decoder tests see
//! 2.4e-6 on logits of magnitude ~1. Gradients are sums over the batch's tokens of products of such
//! values; each is compared as |got − want| ≤ 1e-4 · max|want of that tensor| + 1e-3 · |want|.

use safetensors::SafeTensors;

use crate::common::{assert_close_by, gpu, repo_root};
use crate::decoder_tiny::{floats, ids};

use babelrl::lora::{Adapter, peft_tensor_name};
use babelrl::model::{LanguageModel, load_language_model};
use babelrl::train::{
    AdamW, AdamWConfig, LoraGrads, Schedule, SchedulerType, TrainBatch, TrainSequence, TrainShape,
};

pub(crate) const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen3", "tiny-llama"];

pub(crate) struct Fixture {
    pub(crate) lm: LanguageModel,
    pub(crate) adapter: Adapter,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) fn fixture(dir: &str) -> Fixture {
    let root = repo_root().join("tests/fixtures").join(dir);
    let lm = load_language_model(gpu(), &root).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let adapter = Adapter::load_peft(gpu(), &root.join("lora"), lm.decoder.config()).unwrap();
    let bytes = std::fs::read(root.join("lora/train-expected.safetensors")).unwrap();
    Fixture { lm, adapter, bytes }
}

/// The fixture's SFT batch: its sequences with their prompt lengths.
pub(crate) fn sequences(st: &SafeTensors) -> Vec<TrainSequence> {
    let (all, lengths, prompts) = (ids(st, "input_ids"), ids(st, "lengths"), ids(st, "prompt_lengths"));
    let mut at = 0;
    lengths
        .iter()
        .zip(&prompts)
        .map(|(&n, &p)| {
            let s = TrainSequence { tokens: all[at..at + n as usize].to_vec(), prompt_len: p as usize };
            at += n as usize;
            s
        })
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    close_within(what, got, want, 1e-4);
}

/// |got − want| ≤ of_max · max|want| + 1e-3 · |want|, elementwise.
pub(crate) fn close_within(what: &str, got: &[f32], want: &[f32], of_max: f32) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close_by(what, got, want, |i| of_max * scale + 1e-3 * want[i].abs());
}

/// One forward + backward of the fixture batch with fresh (zeroed) gradients; returns the loss.
fn loss_and_grads(f: &Fixture, batch: &TrainBatch, grads: &LoraGrads, checkpointing: bool) -> f32 {
    let dec = &f.lm.decoder;
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let mut acts = dec.train_activations(shape, &f.adapter, checkpointing).unwrap();
    let scratch = dec.train_gradients(shape, &f.adapter).unwrap();
    let g = gpu();
    let mut b = g.batch();
    grads.zero(&mut b);
    b.submit().unwrap();
    let grad = batch.mean_grad(batch.completion_tokens);
    dec.train_forward(&mut acts, batch, &f.adapter, Some(&grad)).unwrap();
    dec.train_backward(&acts, &scratch, &f.adapter, grads, None).unwrap();
    let nll = gpu().read_f32(&acts.nll).unwrap();
    nll.iter().sum::<f32>() / batch.completion_tokens as f32
}

pub(crate) fn read_grads(f: &Fixture, grads: &LoraGrads) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for layer in 0..f.adapter.layers() {
        for &target in &f.adapter.config().targets {
            let g = grads.pair(layer, target).unwrap();
            for (ab, t) in [('A', &g.da), ('B', &g.db)] {
                out.push((peft_tensor_name(layer, target, ab), gpu().read_f32(t).unwrap()));
            }
        }
    }
    out
}

fn check_gradients(dir: &str) {
    let f = fixture(dir);
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let dec = &f.lm.decoder;
    let batch = TrainBatch::new(&sequences(&st), dec.config().vocab, dec.max_context()).unwrap();
    let grads = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let loss = loss_and_grads(&f, &batch, &grads, false);
    close(&format!("{dir}: loss"), &[loss], &floats(&st, "loss"));
    let got = read_grads(&f, &grads);
    assert_eq!(got.len(), 28 * dec.config().layers / 2, "{dir}: gradient count");
    for (name, g) in &got {
        close(&format!("{dir}: grad.{name}"), g, &floats(&st, &format!("grad.{name}")));
    }
    // Gradient checkpointing recomputes each layer inside the backward: the same numbers exactly.
    let ckpt = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let loss_ckpt = loss_and_grads(&f, &batch, &ckpt, true);
    assert_eq!(loss_ckpt, loss, "{dir}: loss with checkpointing");
    for ((name, g), (_, c)) in got.iter().zip(read_grads(&f, &ckpt)) {
        assert_eq!(g, &c, "{dir}: grad.{name} with checkpointing differs");
    }
}

#[test]
fn lora_gradients_match_peft() {
    for dir in MODELS {
        check_gradients(dir);
    }
}

fn check_three_steps(dir: &str) {
    let f = fixture(dir);
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let dec = &f.lm.decoder;
    let batch = TrainBatch::new(&sequences(&st), dec.config().vocab, dec.max_context()).unwrap();
    let grads = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let config =
        AdamWConfig { learning_rate: 1e-3, weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() };
    let mut opt = AdamW::new(&gpu(), config, LoraGrads::param_specs(&f.adapter)).unwrap();
    let schedule = Schedule::new(SchedulerType::Linear, 1.0, 3).unwrap();
    let (want_loss, want_norm, want_lr) =
        (floats(&st, "loss_per_step"), floats(&st, "grad_norm"), floats(&st, "lr"));
    for step in 0..3u64 {
        let loss = loss_and_grads(&f, &batch, &grads, false);
        close(&format!("{dir}: loss before step {step}"), &[loss], &want_loss[step as usize..][..1]);
        let lr = schedule.lr(config.learning_rate, step);
        assert!((lr as f32 - want_lr[step as usize]).abs() <= 1e-9, "{dir}: lr of step {step}");
        let g = gpu();
        let mut b = g.batch();
        opt.step(&mut b, &grads.with_params(&f.adapter), lr, 1.0).unwrap();
        b.submit().unwrap();
        let norm = opt.read_grad_norm(&gpu()).unwrap().norm;
        close(&format!("{dir}: grad norm of step {step}"), &[norm], &want_norm[step as usize..][..1]);
    }
    let loss = loss_and_grads(&f, &batch, &grads, false);
    close(&format!("{dir}: loss after 3 steps"), &[loss], &floats(&st, "loss_after"));
    for p in f.adapter.to_host().unwrap() {
        for (ab, got) in [('A', &p.a), ('B', &p.b)] {
            let name = peft_tensor_name(p.layer, p.target, ab);
            close(&format!("{dir}: param.{name} after 3 steps"), got, &floats(&st, &format!("param.{name}")));
        }
    }
}

#[test]
fn three_adamw_steps_match_peft_and_torch() {
    for dir in MODELS {
        check_three_steps(dir);
    }
}

/// The loss of `batch` under `adapter` (forward only).
fn loss_of(f: &Fixture, adapter: &Adapter, batch: &TrainBatch) -> f64 {
    let dec = &f.lm.decoder;
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let mut acts = dec.train_activations(shape, adapter, false).unwrap();
    dec.train_forward(&mut acts, batch, adapter, None).unwrap();
    let nll = gpu().read_f32(&acts.nll).unwrap();
    nll.iter().map(|&v| v as f64).sum::<f64>() / batch.completion_tokens as f64
}

/// LoRA dropout (p = 0.3): with the masks fixed by the pass's seed the loss is a function of the
/// adapter, and the walk's gradient must be its derivative. Checked along random directions against
/// central differences of the loss (f64 sums of f32 losses; ε sized so rounding stays below 1 %).
#[test]
fn dropout_gradients_match_finite_differences() {
    let dir = "tiny-qwen2";
    let f = fixture(dir);
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let dec = &f.lm.decoder;
    let mut batch = TrainBatch::new(&sequences(&st), dec.config().vocab, dec.max_context()).unwrap();
    batch.dropout_seed = 11;
    let host = f.adapter.to_host().unwrap();
    let mut config = f.adapter.config().clone();
    config.dropout = 0.3;
    let with = |pairs: &[babelrl::lora::HostPair]| {
        Adapter::from_host(gpu(), config.clone(), dec.config(), pairs).unwrap()
    };
    let dropped = with(&host);
    let plain = loss_of(&f, &f.adapter, &batch);
    let loss = loss_of(&f, &dropped, &batch);
    assert_ne!(loss, plain, "dropout changes nothing");
    assert_eq!(loss, loss_of(&f, &dropped, &batch), "the same seed must give the same masks");
    let mut other = batch.clone();
    other.dropout_seed = 12;
    assert_ne!(loss, loss_of(&f, &dropped, &other), "another seed must give other masks");

    let fx = Fixture {
        lm: load_language_model(gpu(), &repo_root().join("tests/fixtures").join(dir)).unwrap(),
        adapter: with(&host),
        bytes: vec![],
    };
    let grads = LoraGrads::new(&gpu(), &fx.adapter).unwrap();
    loss_and_grads(&fx, &batch, &grads, false);
    let g = read_grads(&fx, &grads);
    for seed in 0..3u64 {
        // A random direction v over every factor; the walk's directional derivative is Σ g·v.
        check_direction(&format!("dropout direction {seed}"), &g, &host, 100 * seed, |pairs| {
            loss_of(&f, &with(pairs), &batch)
        });
    }
}

/// Checks the walk's gradient `g` (as read by `read_grads`) along a random direction `v` (seeded) against
/// central differences of `loss` over adapters moved to `host ± ε v`: |numeric − Σ g·v| ≤ 1 % of the
/// larger (f64 sums of f32 losses; ε = 2e-3 keeps rounding and curvature below that).
fn check_direction(
    what: &str,
    g: &[(String, Vec<f32>)],
    host: &[babelrl::lora::HostPair],
    seed: u64,
    loss: impl Fn(&[babelrl::lora::HostPair]) -> f64,
) {
    let v: Vec<Vec<f32>> = g
        .iter()
        .enumerate()
        .map(|(i, (_, x))| crate::common::random(x.len(), 1.0, seed + i as u64))
        .collect();
    let predicted: f64 =
        g.iter().zip(&v).map(|((_, x), v)| x.iter().zip(v).map(|(a, b)| (a * b) as f64).sum::<f64>()).sum();
    let eps = 2e-3f32;
    let moved = |sign: f32| {
        let mut k = 0;
        let pairs: Vec<_> = host
            .iter()
            .map(|p| {
                let mut p = p.clone();
                for x in [&mut p.a, &mut p.b] {
                    for (x, d) in x.iter_mut().zip(&v[k]) {
                        *x += sign * eps * d;
                    }
                    k += 1;
                }
                p
            })
            .collect();
        loss(&pairs)
    };
    let numeric = (moved(1.0) - moved(-1.0)) / (2.0 * eps as f64);
    eprintln!("{what}: walk {predicted:.6e}, central difference {numeric:.6e}");
    assert!(
        (numeric - predicted).abs() <= 0.01 * predicted.abs().max(numeric.abs()),
        "{what}: walk {predicted} vs finite difference {numeric}"
    );
}

/// The LoRA factors of the SmolLM2 fixture, by the formula scripts/fixtures_smollm2_train.py documents:
/// A[i][j] = 0.02 sin(0.1 + 0.7 l + 1.3 ti + 0.37 i + 0.011 j), B[i][j] = 0.02 cos(0.2 + 0.5 l + 0.9 ti
/// + 0.23 i + 0.017 j), in f64 summed left to right, then rounded to f32.
fn formula_adapter(model: &babelrl::model::DecoderConfig, r: usize) -> Vec<babelrl::lora::HostPair> {
    let mut pairs = Vec::new();
    for l in 0..model.layers {
        for (ti, &target) in babelrl::lora::Target::ALL.iter().enumerate() {
            let (out, inp) = target.shape(model);
            let (lf, tf) = (l as f64, ti as f64);
            let a = (0..r * inp)
                .map(|k| {
                    let (i, j) = ((k / inp) as f64, (k % inp) as f64);
                    (0.02 * (0.1 + 0.7 * lf + 1.3 * tf + 0.37 * i + 0.011 * j).sin()) as f32
                })
                .collect();
            let b = (0..out * r)
                .map(|k| {
                    let (i, j) = ((k / r) as f64, (k % r) as f64);
                    (0.02 * (0.2 + 0.5 * lf + 0.9 * tf + 0.23 * i + 0.017 * j).cos()) as f32
                })
                .collect();
            pairs.push(babelrl::lora::HostPair { layer: l, target, a, b });
        }
    }
    pairs
}

/// The training walk on the real SmolLM2-135M (30 layers) against torch + PEFT on the same f16-rounded
/// weights (tests/fixtures/smollm2-train-expected.safetensors, scripts/fixtures_smollm2_train.py): the
/// loss, every LoRA gradient of layers 0, 14 and 29, the sum of squares of each layer's gradients and the
/// global norm over all 30 layers.
///
/// Tolerance: both sides hold the same f16 weights and compute in f32, so they differ by summation
/// order only, but through 30 layers (and K = 1536 sums) instead of the tiny models' 2: the largest
/// difference measured is 1.4e-4 of its tensor's largest gradient (layer 29's o_proj B), so elements
/// are compared within 5e-4 of the tensor's largest plus 1e-3 of their own size. A dropped term is
/// orders larger (on the tiny Qwen2, a backward without the v projection's LoRA input gradient put
/// q_proj A's gradient off by 14 %).
#[test]
fn smollm2_lora_gradients_match_peft() {
    let Some(dir) = crate::common::model_dir("smollm2-135m-instruct") else { return };
    let lm = load_language_model(gpu(), &dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let dec = &lm.decoder;
    let bytes = std::fs::read(repo_root().join("tests/fixtures/smollm2-train-expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let config = babelrl::lora::LoraConfig::new(2, 4.0, &babelrl::lora::Target::ALL).unwrap();
    let host = formula_adapter(dec.config(), 2);
    let param_sums = floats(&st, "param_sum_per_layer");
    for (l, want) in param_sums.iter().enumerate() {
        let got: f64 = host
            .iter()
            .filter(|p| p.layer == l)
            .flat_map(|p| p.a.iter().chain(&p.b))
            .map(|&v| v as f64)
            .sum();
        assert!(
            (got - *want as f64).abs() <= 1e-6 * want.abs().max(1.0) as f64,
            "layer {l}: adapter formula sum {got} vs {want}"
        );
    }
    let adapter = Adapter::from_host(gpu(), config, dec.config(), &host).unwrap();
    let f = Fixture { lm, adapter, bytes: vec![] };
    let batch =
        TrainBatch::new(&sequences(&st), f.lm.decoder.config().vocab, f.lm.decoder.max_context()).unwrap();
    let grads = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let loss = loss_and_grads(&f, &batch, &grads, false);
    close("smollm2: loss", &[loss], &floats(&st, "loss"));
    let got = read_grads(&f, &grads);
    for (name, g) in &got {
        let layer: usize = name.split('.').nth(4).unwrap().parse().unwrap();
        if [0, 14, 29].contains(&layer) {
            close_within(&format!("smollm2: grad.{name}"), g, &floats(&st, &format!("grad.{name}")), 5e-4);
        }
    }
    let mut per_layer = vec![0.0f64; 30];
    for (name, g) in &got {
        let layer: usize = name.split('.').nth(4).unwrap().parse().unwrap();
        per_layer[layer] += g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
    }
    let per_layer32: Vec<f32> = per_layer.iter().map(|&v| v as f32).collect();
    let want = floats(&st, "grad_sq_per_layer");
    close_within("smollm2: sum of squared gradients per layer", &per_layer32, &want, 5e-4);
    let norm = per_layer.iter().sum::<f64>().sqrt() as f32;
    close("smollm2: global gradient norm", &[norm], &floats(&st, "grad_norm_all"));
}

/// A pass at a sampling temperature (TRL scores GRPO completions with logits / T): each row's nll is
/// the cross-entropy of the inference forward's logits divided by T (f64 on the host), and the gradient
/// is the derivative of that loss (central differences along a random direction).
#[test]
fn temperature_divides_the_logits_and_the_gradient_follows() {
    let f = fixture("tiny-qwen3");
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let dec = &f.lm.decoder;
    let vocab = dec.config().vocab;
    let mut batch = TrainBatch::new(&sequences(&st), vocab, dec.max_context()).unwrap();
    batch.temperature = 0.7;
    // The reference: the inference forward's logits of every row, scaled on the host.
    let cache = dec.new_cache(batch.slots, batch.span).unwrap();
    let rows: Vec<u32> = (0..batch.len() as u32).collect();
    let logits = dec.forward_with(&cache, &batch.tokens, &batch.info, &rows, Some(&f.adapter)).unwrap();
    let logits = gpu().read_f32(&logits).unwrap();
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let mut acts = dec.train_activations(shape, &f.adapter, false).unwrap();
    dec.train_forward(&mut acts, &batch, &f.adapter, None).unwrap();
    let nll = gpu().read_f32(&acts.nll).unwrap();
    let want: Vec<f32> = batch
        .targets
        .iter()
        .enumerate()
        .map(|(t, &y)| {
            if y as usize >= vocab {
                return 0.0;
            }
            let z: Vec<f64> = logits[t * vocab..(t + 1) * vocab].iter().map(|&v| v as f64 / 0.7).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            (lse - z[y as usize]) as f32
        })
        .collect();
    close("tiny-qwen3: nll at temperature 0.7", &nll[..batch.len()], &want);
    let at_one = loss_of(&f, &f.adapter, &TrainBatch { temperature: 1.0, ..batch.clone() });
    assert_ne!(at_one, loss_of(&f, &f.adapter, &batch), "the temperature changed nothing");

    // The gradient at T = 0.7 along a random direction against central differences.
    let grads = LoraGrads::new(&gpu(), &f.adapter).unwrap();
    let scratch = dec.train_gradients(shape, &f.adapter).unwrap();
    let g = gpu();
    let mut zero = g.batch();
    grads.zero(&mut zero);
    zero.submit().unwrap();
    dec.train_forward(&mut acts, &batch, &f.adapter, None).unwrap();
    let grad = batch.mean_grad(batch.completion_tokens);
    dec.train_backward(&acts, &scratch, &f.adapter, &grads, Some(&grad)).unwrap();
    let got = read_grads(&f, &grads);
    let host = f.adapter.to_host().unwrap();
    check_direction("temperature 0.7", &got, &host, 7, |pairs| {
        let a = Adapter::from_host(gpu(), f.adapter.config().clone(), dec.config(), pairs).unwrap();
        loss_of(&f, &a, &batch)
    });
}
