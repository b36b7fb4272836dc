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

const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen3", "tiny-llama"];

struct Fixture {
    lm: LanguageModel,
    adapter: Adapter,
    bytes: Vec<u8>,
}

fn fixture(dir: &str) -> Fixture {
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
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close_by(what, got, want, |i| 1e-4 * scale + 1e-3 * want[i].abs());
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

fn read_grads(f: &Fixture, grads: &LoraGrads) -> Vec<(String, Vec<f32>)> {
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
        let v: Vec<Vec<f32>> = g
            .iter()
            .enumerate()
            .map(|(i, (_, x))| crate::common::random(x.len(), 1.0, 100 * seed + i as u64))
            .collect();
        let predicted: f64 = g
            .iter()
            .zip(&v)
            .map(|((_, x), v)| x.iter().zip(v).map(|(a, b)| (a * b) as f64).sum::<f64>())
            .sum();
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
            loss_of(&f, &with(&pairs), &batch)
        };
        let numeric = (moved(1.0) - moved(-1.0)) / (2.0 * eps as f64);
        let diff = (numeric - predicted).abs();
        eprintln!("dropout direction {seed}: walk {predicted:.6e}, central difference {numeric:.6e}");
        assert!(
            diff <= 0.01 * predicted.abs().max(numeric.abs()),
            "direction {seed}: walk {predicted} vs finite difference {numeric}"
        );
    }
}
