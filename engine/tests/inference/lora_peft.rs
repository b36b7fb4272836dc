//! LoRA against Hugging Face PEFT: adapters made by PEFT on the tiny decoders (all seven projections,
//! r = 4, alpha = 8, rsLoRA on tiny-qwen3; tests/fixtures/tiny-*/lora/, by scripts/fixtures_lora.py)
//! load here and give PEFT's logits and teacher-forced log-probs, with the adapter on and switched off;
//! adapters saved here load back bit for bit; bad adapter folders are errors naming file and tensor.
//! The other direction: adapters babelrl trained and saved (tests/fixtures/tiny-*/lora/babelrl-saved/,
//! by `write_babelrl_saved_adapters` and scripts/fixtures_lora_back.py) load in PEFT and give there
//! the logits they give here.
//!
//! Tolerance: that of the decoder fixtures (2e-5, see decoder_tiny.rs). The adapter's A and B are f32 on
//! both sides, so it adds only f32 rounding of two thin products (K ≤ 160, r = 4).

use std::path::{Path, PathBuf};

use crate::common;
use crate::decoder_tiny::{floats, ids};
use crate::train_lora::sequences;

use babelrl::generate::{FinishReason, SamplingConfig, completion_logprobs, forward_chunked, generate};
use babelrl::gpu::cpu_ref::TokenInfo;
use babelrl::lora::{Adapted, Adapter, LoraConfig, Target, peft_tensor_name};
use babelrl::model::{LanguageModel, load_language_model};
use babelrl::train::{AdamWConfig, Schedule, SchedulerType, SftOptions, SftTrainer};
use common::{assert_close, gpu, repo_root};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen3", "tiny-llama"];
const TOL: f32 = 2e-5;

fn fixture(dir: &str) -> (LanguageModel, PathBuf, Vec<u8>) {
    let root = repo_root().join("tests/fixtures").join(dir);
    let lm = load_language_model(gpu(), &root).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let lora = root.join("lora");
    let expected = std::fs::read(lora.join("expected.safetensors")).unwrap();
    (lm, lora, expected)
}

/// Every position's logits of both fixture sequences, run in one flat batch in two cache slots.
fn all_logits(model: Adapted<'_>, seqs: &[Vec<u32>]) -> Vec<f32> {
    let cache = model.new_cache(seqs.len(), 32).unwrap();
    let (mut tokens, mut info) = (Vec::new(), Vec::new());
    for (slot, s) in seqs.iter().enumerate() {
        for (pos, &t) in s.iter().enumerate() {
            tokens.push(t);
            info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
        }
    }
    let want: Vec<usize> = (0..tokens.len()).collect();
    forward_chunked(model, &cache, &tokens, &info, &want).unwrap().concat()
}

fn check_against_peft(dir: &str) {
    let (lm, lora, bytes) = fixture(dir);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = &lm.decoder;
    let adapter = Adapter::load_peft(gpu(), &lora, model.config()).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let seqs: Vec<Vec<u32>> = (0..2).map(|i| ids(&st, &format!("input_ids_{i}"))).collect();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = seqs.iter().map(|s| (s[..1].to_vec(), s[1..].to_vec())).collect();
    for (how, view, suffix) in
        [("adapter on", model.with_adapter(&adapter), ""), ("adapter off", model.adapted(None), "_off")]
    {
        let logits = all_logits(view, &seqs);
        let want: Vec<f32> = (0..2).flat_map(|i| floats(&st, &format!("logits_{i}{suffix}"))).collect();
        assert_close(&format!("{dir} {how}: logits vs PEFT"), &logits, &want, TOL, 0.0);
        let lps = completion_logprobs(view, &pairs).unwrap();
        for (i, lp) in lps.iter().enumerate() {
            let want = floats(&st, &format!("token_logprobs_{i}{suffix}"));
            assert_close(&format!("{dir} {how}: token_logprobs_{i} vs PEFT"), lp, &want, TOL, 0.0);
        }
    }
    // Off is the base model itself: the same numbers as a plain forward, bit for bit.
    assert_eq!(all_logits(model.adapted(None), &seqs), all_logits(model.into(), &seqs), "{dir}: off ≠ base");
}

#[test]
fn peft_adapters_give_peft_logits_on_and_base_logits_off() {
    for dir in MODELS {
        check_against_peft(dir);
    }
}

/// Generation with a PEFT adapter gives PEFT's greedy tokens (and the base's with it switched off),
/// for two prompts in one batch. tiny-llama-gguf holds tiny-llama's weights with a tokenizer.
/// GRPO interleaves the policy (adapter on) and the reference (adapter off) on one decoder: the logits
/// of a pass stay as they were when a later pass runs (they used to live in the shared workspace, so
/// reading the policy's logits after the reference pass gave the reference's).
#[test]
fn a_later_pass_does_not_change_an_earlier_passs_logits() {
    let (lm, lora, bytes) = fixture("tiny-qwen2");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = &lm.decoder;
    let adapter = Adapter::load_peft(gpu(), &lora, model.config()).unwrap();
    let seq = ids(&st, "input_ids_0");
    let info: Vec<TokenInfo> =
        (0..seq.len() as u32).map(|pos| TokenInfo { pos, slot: 0, n_keys: pos + 1 }).collect();
    let rows: Vec<u32> = (0..seq.len() as u32).collect();
    let run = |adapter: Option<&Adapter>| {
        let cache = model.new_cache(1, seq.len()).unwrap();
        model.forward_with(&cache, &seq, &info, &rows, adapter).unwrap()
    };
    let policy = run(Some(&adapter));
    let policy_then = model.read_logits(&policy).unwrap();
    let reference = run(None);
    let policy_now = model.read_logits(&policy).unwrap();
    assert_eq!(policy_now, policy_then, "the reference pass overwrote the policy pass's logits");
    assert_ne!(model.read_logits(&reference).unwrap(), policy_now, "the adapter changes the logits");
}

#[test]
fn generation_with_a_peft_adapter_follows_peft_greedy() {
    let fixtures = repo_root().join("tests/fixtures");
    let lm = load_language_model(gpu(), &fixtures.join("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    let lora = fixtures.join("tiny-llama/lora");
    let adapter = Adapter::load_peft(gpu(), &lora, lm.decoder.config()).unwrap();
    let bytes = std::fs::read(lora.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let prompt = ids(&st, "input_ids_0")[..4].to_vec();
    let cfg = SamplingConfig { max_new_tokens: 8, ..Default::default() };
    let tok = lm.tokenizer().unwrap();
    for (view, key) in
        [(lm.decoder.with_adapter(&adapter), "greedy_ids"), (lm.decoder.adapted(None), "greedy_ids_off")]
    {
        let want = ids(&st, key);
        for (i, c) in
            generate(view, tok, &[prompt.clone(), prompt.clone()], &cfg, |_| {}).unwrap().iter().enumerate()
        {
            let n = c.tokens.len();
            assert!(n == want.len() || c.finish == FinishReason::StopToken, "{key} {i}: {c:?}");
            assert_eq!(c.tokens, want[..n], "{key} {i}: greedy tokens vs PEFT");
        }
    }
}

/// The comparison can fail: the same A and B with the scale doubled (a deliberately wrong adapter)
/// land far outside the tolerance.
#[test]
fn a_doubled_scale_is_caught_by_the_peft_comparison() {
    let (lm, lora, bytes) = fixture("tiny-qwen2");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = &lm.decoder;
    let right = Adapter::load_peft(gpu(), &lora, model.config()).unwrap();
    let mut cfg = right.config().clone();
    cfg.alpha *= 2.0;
    let wrong = Adapter::from_host(gpu(), cfg, model.config(), &right.to_host().unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = (0..2).map(|i| ids(&st, &format!("input_ids_{i}"))).collect();
    let want: Vec<f32> = (0..2).flat_map(|i| floats(&st, &format!("logits_{i}"))).collect();
    let got = all_logits(model.with_adapter(&wrong), &seqs);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst > 1000.0 * TOL, "doubling the scale moved the logits by only {worst}");
}

#[test]
fn fresh_adapters_start_at_the_base_model_and_are_seeded() {
    let (lm, _, bytes) = fixture("tiny-llama");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = &lm.decoder;
    let cfg = LoraConfig::new(8, 16.0, &Target::ALL).unwrap();
    let a = Adapter::init(gpu(), cfg.clone(), model.config(), 7).unwrap();
    let host = a.to_host().unwrap();
    assert_eq!(host.len(), model.config().layers * 7);
    for p in &host {
        let (_, inp) = p.target.shape(model.config());
        let bound = 1.0 / (inp as f32).sqrt();
        assert!(p.a.iter().all(|v| v.abs() <= bound) && p.a.iter().any(|v| v.abs() > 0.5 * bound));
        assert!(p.b.iter().all(|&v| v == 0.0), "B starts at zero");
    }
    assert_eq!(Adapter::init(gpu(), cfg.clone(), model.config(), 7).unwrap().to_host().unwrap(), host);
    assert_ne!(Adapter::init(gpu(), cfg, model.config(), 8).unwrap().to_host().unwrap(), host);
    let seqs: Vec<Vec<u32>> = (0..2).map(|i| ids(&st, &format!("input_ids_{i}"))).collect();
    assert_eq!(all_logits(model.with_adapter(&a), &seqs), all_logits(model.into(), &seqs));
}

/// Also keeps the saved folders under `$BABELRL_LORA_SAVE_DIR/<model>` when set, for the other half
/// of the round trip: `scripts/fixtures_lora.py check DIR/tiny-qwen2 tests/fixtures/tiny-qwen2` loads
/// them in PEFT and compares PEFT's logits with the fixture.
#[test]
fn saved_adapters_load_back_bit_for_bit() {
    for dir in MODELS {
        let (lm, lora, _) = fixture(dir);
        let cfg = lm.decoder.config();
        let first = Adapter::load_peft(gpu(), &lora, cfg).unwrap();
        let out = tempfile::tempdir().unwrap();
        first.save_peft(out.path()).unwrap();
        let names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{dir}: only the two PEFT files, no temporaries: {names:?}");
        let again = Adapter::load_peft(gpu(), out.path(), cfg).unwrap();
        assert_eq!(again.config(), first.config(), "{dir}");
        let bits = |a: &Adapter| -> Vec<Vec<u32>> {
            a.to_host()
                .unwrap()
                .iter()
                .flat_map(|p| [&p.a, &p.b])
                .map(|v| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&again), bits(&first), "{dir}: values after a save and load");
        if let Some(keep) = std::env::var_os("BABELRL_LORA_SAVE_DIR") {
            first.save_peft(&Path::new(&keep).join(dir)).unwrap();
        }
    }
}

/// Writes tests/fixtures/tiny-*/lora/babelrl-saved/: the committed PEFT adapter trained by babelrl's
/// SFT trainer for three AdamW steps on the batch of lora/train-expected.safetensors, then saved with
/// `save_peft`. scripts/fixtures_lora_back.py runs this, then records PEFT's logits with the result.
#[test]
#[ignore = "writes fixtures: run by `scripts/make_fixtures.py lora-back` (scripts/fixtures_lora_back.py)"]
fn write_babelrl_saved_adapters() {
    for dir in MODELS {
        let (lm, lora, _) = fixture(dir);
        let dec = &lm.decoder;
        let adapter = Adapter::load_peft(gpu(), &lora, dec.config()).unwrap();
        let bytes = std::fs::read(lora.join("train-expected.safetensors")).unwrap();
        let data = sequences(&SafeTensors::deserialize(&bytes).unwrap());
        let optim =
            AdamWConfig { learning_rate: 1e-3, weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() };
        let schedule = Schedule::new(SchedulerType::Linear, 0.0, 3).unwrap();
        let options = SftOptions { batch_size: data.len(), shuffle: false, ..Default::default() };
        let mut trainer = SftTrainer::new(dec, adapter, data, optim, schedule, options).unwrap();
        for _ in 0..3 {
            let m = trainer.step().unwrap();
            eprintln!(
                "{dir}: step {} loss {:.6} grad norm {:.4} lr {:.2e}",
                m.step, m.loss, m.grad_norm, m.lr
            );
        }
        let out = lora.join("babelrl-saved");
        trainer.adapter().save_peft(&out).unwrap();
        eprintln!("{dir}: saved {}", out.display());
    }
}

/// The other direction of the round trip: the adapter babelrl trained and saved (babelrl-saved/) gives
/// here the logits PEFT gives with it (babelrl-saved/peft-logits.safetensors, recorded for exactly these
/// adapter bytes). Training moved every tensor away from the committed adapter and PEFT's logits with
/// it, so the comparison cannot pass with an untrained (or zero-B) adapter.
#[test]
fn babelrl_saved_adapters_give_the_same_logits_in_peft() {
    for dir in MODELS {
        let (lm, lora, bytes) = fixture(dir);
        let model = &lm.decoder;
        let saved = lora.join("babelrl-saved");
        let weights = std::fs::read(saved.join("adapter_model.safetensors")).unwrap();
        let peft_bytes = std::fs::read(saved.join("peft-logits.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&peft_bytes).unwrap();
        let recorded = meta.metadata().as_ref().and_then(|m| m.get("adapter_sha256")).map(String::as_str);
        let sha = format!("{:x}", Sha256::digest(&weights));
        assert_eq!(
            recorded,
            Some(sha.as_str()),
            "{dir}: babelrl-saved/peft-logits.safetensors was not made from this adapter_model.safetensors: \
             rerun `scripts/make_fixtures.py lora-back`"
        );

        let initial = Adapter::load_peft(gpu(), &lora, model.config()).unwrap();
        let trained =
            Adapter::load_peft(gpu(), &saved, model.config()).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(trained.config(), initial.config(), "{dir}: the saved config");
        for (t, i) in trained.to_host().unwrap().iter().zip(initial.to_host().unwrap()) {
            let (a, b) = (peft_tensor_name(t.layer, t.target, 'A'), peft_tensor_name(t.layer, t.target, 'B'));
            assert!(t.b.iter().any(|&v| v != 0.0), "{dir}: {b} is zero");
            assert_ne!(t.a, i.a, "{dir}: {a} is the committed one: training did not move it");
            assert_ne!(t.b, i.b, "{dir}: {b} is the committed one: training did not move it");
        }

        let st = SafeTensors::deserialize(&bytes).unwrap();
        let peft = SafeTensors::deserialize(&peft_bytes).unwrap();
        let seqs: Vec<Vec<u32>> = (0..2).map(|i| ids(&st, &format!("input_ids_{i}"))).collect();
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(&ids(&peft, &format!("input_ids_{i}")), s, "{dir}: PEFT ran other inputs");
        }
        let want: Vec<f32> = (0..2).flat_map(|i| floats(&peft, &format!("logits_{i}"))).collect();
        let got = all_logits(model.with_adapter(&trained), &seqs);
        assert_close(&format!("{dir}: logits with babelrl's saved adapter vs PEFT"), &got, &want, TOL, 0.0);
        let before: Vec<f32> = (0..2).flat_map(|i| floats(&st, &format!("logits_{i}"))).collect();
        let moved = want.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 100.0 * TOL, "{dir}: training moved PEFT's logits by only {moved}");
    }
}

/// A copy of tiny-qwen2's PEFT adapter with its config and tensors edited by `edit`.
fn edited_adapter(
    out: &Path,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<usize>, Vec<u8>)>),
) {
    let src = repo_root().join("tests/fixtures/tiny-qwen2/lora");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.iter().map(|(n, v)| (n.to_string(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut config, &mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(out.join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap())
        .unwrap();
    std::fs::write(out.join("adapter_config.json"), config.to_string()).unwrap();
}

#[test]
fn bad_adapter_folders_are_clear_errors() {
    let (lm, _, _) = fixture("tiny-qwen2");
    let cfg = lm.decoder.config();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<usize>, Vec<u8>)>)>;
    let q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "wrong rank",
            Box::new(|c, _| c["r"] = 8.into()),
            vec!["adapter_model.safetensors", "rank 8", ".weight` has shape"],
        ),
        (
            "module not in the config",
            Box::new(|c, _| c["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj"])),
            vec!["adapter_model.safetensors", "not among the target_modules"],
        ),
        (
            "unknown module",
            Box::new(|c, _| c["target_modules"] = serde_json::json!(["q_proj", "lm_head"])),
            vec!["adapter_config.json", "lm_head"],
        ),
        (
            "layer the model lacks",
            Box::new(|_, t| t.iter_mut().for_each(|e| e.0 = e.0.replace("layers.1.", "layers.5."))),
            vec!["adapter_model.safetensors", "layers.5", "has 2 layers"],
        ),
        (
            "missing tensor",
            Box::new(move |_, t| t.retain(|e| e.0 != q_a)),
            vec!["adapter_model.safetensors", q_a, "missing"],
        ),
        (
            "wrong shape",
            Box::new(move |_, t| {
                let e = t.iter_mut().find(|e| e.0 == q_a).unwrap();
                e.1 = vec![4, 32];
                e.2.truncate(4 * 32 * 4);
            }),
            vec!["adapter_model.safetensors", q_a, "[4, 32]"],
        ),
        (
            "foreign tensor",
            Box::new(|_, t| {
                t.push(("base_model.model.lm_head.lora_A.weight".into(), vec![1, 2], vec![0; 8]))
            }),
            vec!["adapter_model.safetensors", "lm_head.lora_A"],
        ),
        ("DoRA", Box::new(|c, _| c["use_dora"] = true.into()), vec!["adapter_config.json", "use_dora"]),
    ];
    for (what, edit, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        edited_adapter(dir.path(), edit);
        let e = Adapter::load_peft(gpu(), dir.path(), cfg)
            .err()
            .unwrap_or_else(|| panic!("{what}: loaded"))
            .to_string();
        for s in says {
            assert!(e.contains(s), "{what}: `{e}` does not mention `{s}`");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    edited_adapter(dir.path(), |_, _| {});
    std::fs::write(dir.path().join("adapter_model.safetensors"), b"truncated").unwrap();
    let e = Adapter::load_peft(gpu(), dir.path(), cfg).err().unwrap().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    let e = Adapter::load_peft(gpu(), &repo_root().join("tests/fixtures/tiny-qwen2"), cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("adapter_config.json"), "not an adapter folder: {e}");
}

/// `babelrl generate --adapter DIR` prints what the library generates with that adapter, and a folder
/// that is no adapter fails with a message naming the missing file.
#[test]
fn cli_generate_takes_a_peft_adapter() {
    let fixtures = repo_root().join("tests/fixtures");
    let model = fixtures.join("tiny-llama-gguf/tiny-llama.gguf");
    let lora = fixtures.join("tiny-llama/lora");
    let run = |adapter: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_babelrl"))
            .args(["generate", "--prompt", "the quick", "--max-tokens", "8", "--model"])
            .arg(&model)
            .arg("--adapter")
            .arg(adapter)
            .output()
            .expect("run the babelrl binary")
    };
    let out = run(&lora);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lm = load_language_model(gpu(), &model).unwrap();
    let adapter = Adapter::load_peft(gpu(), &lora, lm.decoder.config()).unwrap();
    let tok = lm.tokenizer().unwrap();
    let prompt = tok.encode("the quick", true).unwrap();
    let cfg = SamplingConfig { max_new_tokens: 8, ..Default::default() };
    let want = generate(lm.decoder.with_adapter(&adapter), tok, std::slice::from_ref(&prompt), &cfg, |_| {})
        .unwrap();
    let base = generate(&lm.decoder, tok, &[prompt], &cfg, |_| {}).unwrap();
    assert_ne!(want[0].tokens, base[0].tokens, "the adapter changes this continuation");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n", want[0].text));

    let out = run(&fixtures.join("tiny-qwen2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("adapter_config.json"), "{err}");
}
