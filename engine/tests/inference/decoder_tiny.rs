//! The decoder against transformers: tiny random Qwen2 (f32 weights), Qwen3 (bf16) and Llama (f16,
//! tied embeddings) models built by scripts/make_fixtures.py, whose logits and teacher-forced
//! log-probs on fixed inputs are in tests/fixtures/tiny-*/expected.safetensors.
//!
//! Tolerance: the weights are 16-bit-exact (bf16 and f16 convert to the engine's f16 without loss, and
//! the f32 model's weights are f16-representable), so the only differences are f32 summation order and
//! the RoPE table (computed in f64 here, f32 in torch): observed ≤ 2.4e-6 on logits of standard
//! deviation ~0.8 for these 2-layer models. 2e-5 leaves 10× headroom for other adapters' rounding and
//! is far below what a wrong mask, head mapping, bias, norm or rotation produces (≥ 1e-2).

use crate::common;

use babelrl::generate::{completion_logprobs, completion_logprobs_packed};
use babelrl::gpu::cpu_ref::TokenInfo;
use babelrl::model::load_language_model;
use common::{assert_close, gpu, repo_root};
use safetensors::{Dtype, SafeTensors};

pub fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    match t.dtype() {
        Dtype::I64 => {
            t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
        }
        Dtype::I32 => {
            t.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
        }
        other => panic!("{name}: unexpected dtype {other:?}"),
    }
}

pub fn floats(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn check_model(dir: &str) {
    let root = repo_root().join("tests/fixtures").join(dir);
    let lm = load_language_model(gpu(), &root).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let model = &lm.decoder;
    let vocab = model.config().vocab;
    let bytes = std::fs::read(root.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    // Both sequences in one flat batch, in different cache slots, as generation runs them.
    let seqs: Vec<Vec<u32>> = (0..2).map(|i| ids(&st, &format!("input_ids_{i}"))).collect();
    let cache = model.new_cache(2, 32).unwrap();
    let mut tokens = Vec::new();
    let mut info = Vec::new();
    for (slot, s) in seqs.iter().enumerate() {
        for (pos, &t) in s.iter().enumerate() {
            tokens.push(t);
            info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
        }
    }
    let rows: Vec<u32> = (0..tokens.len() as u32).collect();
    let logits = model.read_logits(&model.forward(&cache, &tokens, &info, &rows).unwrap()).unwrap();
    let mut offset = 0;
    for (i, s) in seqs.iter().enumerate() {
        let want = floats(&st, &format!("logits_{i}"));
        let got = &logits[offset * vocab..(offset + s.len()) * vocab];
        assert_close(&format!("{dir} logits_{i}"), got, &want, 2e-5, 0.0);
        offset += s.len();
    }

    // Teacher forcing: the log-prob of token t+1 given tokens ..=t, with the first token as prompt.
    // A pair with an empty completion in between must get an empty row and not shift the others.
    let mut pairs: Vec<(Vec<u32>, Vec<u32>)> =
        seqs.iter().map(|s| (s[..1].to_vec(), s[1..].to_vec())).collect();
    pairs.insert(1, (seqs[1][..2].to_vec(), Vec::new()));
    // All pairs packed into one pass (the default budget), and each pair in a pass of its own.
    for (how, lps) in [
        ("packed", completion_logprobs(model, &pairs).unwrap()),
        ("one by one", completion_logprobs_packed(model, &pairs, 1).unwrap()),
    ] {
        assert_eq!(lps.len(), pairs.len(), "{dir} {how}: one row of log-probs per pair");
        assert!(lps[1].is_empty(), "{dir} {how}: an empty completion has no log-probs");
        for (i, lp) in [&lps[0], &lps[2]].into_iter().enumerate() {
            assert_close(
                &format!("{dir} {how} token_logprobs_{i}"),
                lp,
                &floats(&st, &format!("token_logprobs_{i}")),
                2e-5,
                0.0,
            );
        }
    }
}

/// Pairs that share a prompt (a GRPO group) compute it once and copy its keys and values: the same
/// log-probs as each pair alone, and as transformers for the completions that are its sequences.
fn check_shared_prompts(dir: &str) {
    let root = repo_root().join("tests/fixtures").join(dir);
    let lm = load_language_model(gpu(), &root).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let bytes = std::fs::read(root.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let s0 = ids(&st, "input_ids_0");
    let s1 = ids(&st, "input_ids_1");
    assert!(s0.len() >= 4 && s1.len() >= 3, "{dir}: fixture sequences too short");
    let prompt = s0[..2].to_vec();
    let pairs = vec![
        (prompt.clone(), s0[2..].to_vec()),
        (s1[..1].to_vec(), s1[1..].to_vec()),
        (prompt.clone(), s1[1..].to_vec()),
        (prompt.clone(), s0[2..3].to_vec()),
        (prompt, s0[3..].to_vec()),
    ];
    let shared = completion_logprobs(&lm.decoder, &pairs).unwrap();
    let alone = completion_logprobs_packed(&lm.decoder, &pairs, 1).unwrap();
    for (i, (a, b)) in shared.iter().zip(&alone).enumerate() {
        assert_eq!(a.len(), pairs[i].1.len(), "{dir} pair {i}");
        assert_close(&format!("{dir} shared prompt, pair {i}"), a, b, 2e-5, 0.0);
    }
    let want = floats(&st, "token_logprobs_0");
    assert_close(&format!("{dir} shared prompt vs transformers"), &shared[0], &want[1..], 2e-5, 0.0);
}

#[test]
fn shared_prompts_are_computed_once_with_the_same_logprobs() {
    for dir in ["tiny-qwen2", "tiny-qwen3", "tiny-llama"] {
        check_shared_prompts(dir);
    }
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_model("tiny-qwen2");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_model("tiny-qwen3");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_model("tiny-llama");
}

/// `forward_hidden` stops before the LM head (where a reward model's scalar head goes): its rows,
/// multiplied by tiny-qwen2's LM head on the CPU, give transformers' logits, and only the rows asked
/// for come back, in the order asked.
#[test]
fn hidden_states_before_the_lm_head_give_transformers_logits() {
    let root = repo_root().join("tests/fixtures/tiny-qwen2");
    let lm = load_language_model(gpu(), &root).unwrap();
    let model = &lm.decoder;
    let (vocab, hidden) = (model.config().vocab, model.config().hidden);
    let expected = std::fs::read(root.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&expected).unwrap();
    let weights = std::fs::read(root.join("model.safetensors")).unwrap();
    let head = floats(&SafeTensors::deserialize(&weights).unwrap(), "lm_head.weight");
    let seq = ids(&st, "input_ids_0");
    let want = floats(&st, "logits_0");
    let info: Vec<TokenInfo> =
        (0..seq.len() as u32).map(|pos| TokenInfo { pos, slot: 0, n_keys: pos + 1 }).collect();
    let rows: Vec<u32> = vec![seq.len() as u32 - 1, 0, 2];
    let cache = model.new_cache(1, seq.len()).unwrap();
    let out = model.forward_hidden(&cache, &seq, &info, &rows, None).unwrap();
    assert_eq!(out.shape, [rows.len(), hidden]);
    let h = model.read_logits(&out).unwrap();
    for (i, &row) in rows.iter().enumerate() {
        let got: Vec<f32> = (0..vocab)
            .map(|v| {
                let w = &head[v * hidden..(v + 1) * hidden];
                h[i * hidden..(i + 1) * hidden].iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                    as f32
            })
            .collect();
        let at = row as usize * vocab;
        assert_close(&format!("hidden row {row} · lm_head"), &got, &want[at..at + vocab], 2e-5, 0.0);
    }
}

/// A decode step launches at most eight kernels per layer (norm, q/k/v matmul, split + RoPE + cache
/// write, fused attention, o matmul + residual, norm, gate/up matmul with the SwiGLU epilogue, down
/// matmul + residual) and three around them (embedding, final norm, LM head), on a device of its own so
/// no other test's launches are counted.
#[test]
fn a_decode_step_launches_at_most_eight_kernels_per_layer() {
    use babelrl::gpu::{Gpu, GpuOptions};
    let gpu = Gpu::new(&GpuOptions::from_env()).unwrap();
    let root = repo_root().join("tests/fixtures/tiny-llama");
    let lm = load_language_model(gpu.clone(), &root).unwrap();
    let model = &lm.decoder;
    let cache = model.new_cache(2, 16).unwrap();
    let prompt = [5u32, 17, 99];
    let info: Vec<TokenInfo> = (0..3).map(|p| TokenInfo { pos: p, slot: 0, n_keys: p + 1 }).collect();
    model.forward(&cache, &prompt, &info, &[2]).unwrap();
    for batch in [1usize, 2] {
        let tokens = vec![42u32; batch];
        let info: Vec<TokenInfo> =
            (0..batch as u32).map(|s| TokenInfo { pos: 3, slot: s, n_keys: 4 }).collect();
        let rows: Vec<u32> = (0..batch as u32).collect();
        let before = gpu.dispatch_count();
        model.forward(&cache, &tokens, &info, &rows).unwrap();
        let launched = gpu.dispatch_count() - before;
        let layers = model.config().layers as u64;
        assert!(launched <= 8 * layers + 3, "batch {batch}: {launched} launches for {layers} layers");
    }
}
