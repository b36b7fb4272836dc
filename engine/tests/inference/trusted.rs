//! The engine's shader modules run without naga's runtime checks (`create_shader_module_trusted`)
//! unless `BABELRL_SHADER_CHECKS=1`: a launch whose buffers are too small (or not padded to the
//! `vec4` loads) is refused on the host before anything reaches the GPU, the shaders' own clamps keep
//! indices read from buffers (row maps, pooling spans) inside their bindings, and the trusted and
//! checked modules compute the same numbers bit for bit on the tiny models.

use crate::common;

use std::sync::Arc;

use babelrl::generate::completion_logprobs;
use babelrl::gpu::cpu_ref::TokenInfo;
use babelrl::gpu::kernels_lora::{LoraShape, OutputSlice};
use babelrl::gpu::kernels_optim::AdamwScalars;
use babelrl::gpu::{Gpu, GpuOptions, Tensor, Weight16};
use babelrl::model::{Encoder, load_language_model};
use common::{gpu, random, repo_root};

/// Whether the environment asked for checked modules (then the tests below compare checked with checked).
fn checks_from_env() -> bool {
    GpuOptions::from_env().shader_checks
}

/// A device whose modules keep naga's runtime checks.
fn checked_gpu() -> Arc<Gpu> {
    let gpu = Gpu::new(&GpuOptions { shader_checks: true, ..GpuOptions::from_env() }).unwrap();
    assert!(gpu.shader_checks());
    gpu
}

fn storage(gpu: &Gpu, bytes: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("hand-made"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// The default device runs the trusted path (as CI does), and a launch with a buffer smaller than
/// its shape claims, a buffer not padded to whole 16-byte vectors, or a hand-made weight whose buffer is
/// short is an error naming kernel and buffer; nothing is recorded and no dispatch is submitted.
#[test]
fn mis_sized_launches_are_refused_before_the_gpu_with_checks_off() {
    // A device of its own: tests running alongside on the shared one would move its dispatch count.
    let gpu = Gpu::new(&GpuOptions::from_env()).unwrap();
    if !checks_from_env() {
        assert!(!gpu.shader_checks(), "the default device must build its modules without runtime checks");
    }
    let (t, n, k) = (3, 8, 16);
    let x = gpu.zeros("x", &[t, k]).unwrap();
    let y = gpu.zeros("y", &[t, n]).unwrap();
    let w = gpu.upload_weight("w", &random(n * k, 1.0, 1), n, k).unwrap();
    // Shapes that claim more than their buffers hold (Tensor's fields are public).
    let lying_x = Tensor { buffer: storage(&gpu, 16), shape: vec![t, k] };
    let lying_y = Tensor { buffer: storage(&gpu, 16), shape: vec![t, n] };
    // 6 floats in 24 bytes: enough words, but a `vec4` load of the last one reads past the buffer.
    let unpadded = Tensor { buffer: storage(&gpu, 24), shape: vec![6] };
    let short_w = Weight16 { buffer: storage(&gpu, 16), rows: n, cols: k, packed: None };
    let odd_w = Weight16 { buffer: storage(&gpu, 4096), rows: n, cols: k - 1, packed: None };
    let ids = gpu.zeros("ids", &[t]).unwrap();
    let param = Tensor { buffer: storage(&gpu, 16), shape: vec![64] };
    let moments = gpu.zeros("m", &[64]).unwrap();
    let clip = gpu.zeros("clip", &[2]).unwrap();
    let (r, lora_k) = (2, k);
    let lora_a = Tensor { buffer: storage(&gpu, 16), shape: vec![r, lora_k] };
    let lora_b = gpu.zeros("b", &[n, r]).unwrap();
    let u = gpu.zeros("u", &[t, r]).unwrap();
    let six = gpu.zeros("six", &[1, 6]).unwrap();
    let scalars = AdamwScalars::new(1e-3, 0.9, 0.999, 1e-6, 0.0, 1, 1.0);

    let before = gpu.dispatch_count();
    let mut b = gpu.batch();
    let shape = LoraShape { t, n, k: lora_k, r };
    let slice = OutputSlice { ldy: n, n_off: 0 };
    let cases = [
        ("matmul: `x` is [3, 16] (48 elements); the launch needs", b.matmul(&lying_x, &w, None, None, &y, t)),
        ("matmul: `y` is [3, 8]", b.matmul(&x, &w, None, None, &lying_y, t)),
        ("matmul: weight `w` claims 8 × 16", b.matmul(&x, &short_w, None, None, &y, t)),
        ("matmul: weight `w` is 8 × 15", b.matmul(&x, &odd_w, None, None, &y, t)),
        ("embed_rows: weight `table` claims", b.embed_rows(&ids, &short_w, &x, t)),
        ("gelu: `x`'s buffer of 24 bytes is not padded", b.gelu(&unpadded, 1, 6)),
        ("rms_norm: `x`'s buffer of 24 bytes", b.rms_norm(&unpadded, &six, None, &six, 1, 1e-5)),
        ("adamw: `parameter` is [64]", b.adamw_step(&param, &moments, &moments, &moments, &clip, &scalars)),
        ("lora_forward: `a` is [2, 16]", b.lora_forward(&x, &lora_a, &lora_b, 1.0, &u, &y, shape, slice)),
        ("logprob: a vocabulary of 0", b.logprob(&y, &ids, &y, &ids, t, 0)),
    ];
    for (says, got) in cases {
        let e = got.expect_err(says).to_string();
        assert!(e.contains(says), "want {says:?} in: {e}");
    }
    assert!(b.is_empty(), "a refused launch recorded a dispatch");
    b.submit().unwrap();
    assert_eq!(gpu.dispatch_count(), before, "a refused launch reached the GPU");
    // The counter does count: one well-sized launch is one dispatch.
    let mut b = gpu.batch();
    b.matmul(&x, &w, None, None, &y, t).unwrap();
    b.submit().unwrap();
    assert_eq!(gpu.dispatch_count(), before + 1);
}

/// Indices read from buffers are clamped in the trusted shaders: a row map past x's last row reads the
/// last row, and a pooling span past x's end sums only the rows that exist.
#[test]
fn trusted_kernels_clamp_indices_read_from_buffers() {
    let gpu = gpu();
    let dim = 4;
    let xs = random(2 * dim, 1.0, 5);
    let x = gpu.upload_f32("x", &xs, &[2, dim]).unwrap();
    let ones = gpu.upload_f32("w", &[1.0; 4], &[dim]).unwrap();
    let map = gpu.upload_u32("rows", &[1, 7], &[2]).unwrap();
    let out = gpu.zeros("out", &[2, dim]).unwrap();
    let spans = gpu.upload_u32("spans", &[1, 5], &[1, 2]).unwrap();
    let pooled = gpu.zeros("pooled", &[1, dim]).unwrap();
    let mut b = gpu.batch();
    b.rms_norm(&x, &ones, Some(&map), &out, 2, 1e-6).unwrap();
    b.mean_pool_l2(&x, &spans, &pooled, 1, dim).unwrap();
    b.submit().unwrap();
    let got = gpu.read_f32(&out).unwrap();
    assert_eq!(got[..dim], got[dim..], "row 7 of a 2-row x reads row 1");
    // Mean over rows 1..6 of which only row 1 exists (divided by the span's length 5), then L2-normalised:
    // the direction of row 1.
    let row1 = &xs[dim..];
    let norm = row1.iter().map(|v| v * v).sum::<f32>().sqrt();
    let want: Vec<f32> = row1.iter().map(|v| v / norm).collect();
    common::assert_close("pooled past the end", &gpu.read_f32(&pooled).unwrap(), &want, 1e-6, 0.0);
}

/// The tiny decoders' logits (prefill of two sequences, then one decode step) and teacher-forced
/// log-probs are bit-identical with and without naga's runtime checks, for both kernel families.
#[test]
fn trusted_and_checked_modules_give_the_same_decoder_numbers() {
    let run = |g: Arc<Gpu>, dir: &str| -> Vec<Vec<f32>> {
        let lm = load_language_model(g, &repo_root().join("tests/fixtures").join(dir)).unwrap();
        let model = &lm.decoder;
        let seqs: [&[u32]; 2] = [&[1, 5, 9, 2, 7, 3, 11], &[4, 8, 6, 10]];
        let cache = model.new_cache(2, 16).unwrap();
        let (mut tokens, mut info) = (Vec::new(), Vec::new());
        for (slot, s) in seqs.iter().enumerate() {
            for (pos, &t) in s.iter().enumerate() {
                tokens.push(t);
                info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
            }
        }
        let rows: Vec<u32> = (0..tokens.len() as u32).collect();
        let prefill = model.read_logits(&model.forward(&cache, &tokens, &info, &rows).unwrap()).unwrap();
        let step: Vec<TokenInfo> = seqs
            .iter()
            .enumerate()
            .map(|(s, q)| TokenInfo { pos: q.len() as u32, slot: s as u32, n_keys: q.len() as u32 + 1 })
            .collect();
        let decode = model.read_logits(&model.forward(&cache, &[12, 13], &step, &[0, 1]).unwrap()).unwrap();
        let pairs: Vec<(Vec<u32>, Vec<u32>)> =
            seqs.iter().map(|s| (s[..2].to_vec(), s[2..].to_vec())).collect();
        let lps = completion_logprobs(model, &pairs).unwrap().concat();
        vec![prefill, decode, lps]
    };
    let family = |checks: bool, kernels: babelrl::gpu::KernelProfile| {
        Gpu::new(&GpuOptions { shader_checks: checks, kernels: Some(kernels), ..GpuOptions::from_env() })
            .unwrap()
    };
    for dir in ["tiny-qwen2", "tiny-qwen3", "tiny-llama"] {
        for kernels in [babelrl::gpu::KernelProfile::Cpu, babelrl::gpu::KernelProfile::Gpu] {
            let trusted = family(checks_from_env(), kernels);
            let checked = family(true, kernels);
            let (a, b) = (run(trusted, dir), run(checked, dir));
            for (what, (x, y)) in
                ["prefill logits", "decode logits", "log-probs"].iter().zip(a.iter().zip(&b))
            {
                assert!(!x.is_empty() && x.iter().all(|v| v.is_finite()), "{dir} {kernels:?} {what}");
                assert_eq!(x, y, "{dir} {kernels:?} {what}: trusted and checked modules differ");
            }
        }
    }
}

/// The tiny BERT encoder (embedding sums, layer norm, GELU, mean pooling) gives the same embeddings
/// with and without naga's runtime checks.
#[test]
fn trusted_and_checked_modules_give_the_same_encoder_embeddings() {
    let dir = repo_root().join("tests/fixtures/tiny-bert");
    let texts = vec!["a short sentence".to_string(), "and another, somewhat longer one".to_string()];
    let trusted = Encoder::load(gpu(), &dir).unwrap().embed(&texts).unwrap();
    let checked = Encoder::load(checked_gpu(), &dir).unwrap().embed(&texts).unwrap();
    assert_eq!(trusted, checked);
}
