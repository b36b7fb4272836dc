//! Bradley–Terry reward-model training: TRL's loss and torch autograd's gradients (wrt the rewards, the
//! score head and LoRA factors) on the tiny SEQ_CLS adapter (scripts/fixtures_reward_train.py); a tiny
//! model trained on a separable synthetic preference set ranking held-out pairs; the saved adapter and
//! head read back by `RewardModel` with the trainer's own scores; and the errors of bad inputs.

use crate::common::{assert_close, gpu, repo_root, scratch};

use std::path::{Path, PathBuf};

use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::weights::{SafetensorsFolder, WeightSource};
use babelrl::model::{Decoder, DecoderConfig, RewardModel};
use babelrl::text::Tokenizer;
use babelrl::train::reward::initial_head;
use babelrl::train::{
    AdamWConfig, PreferencePair, RewardOptions, RewardPair, RewardTrainer, Schedule, SchedulerType,
    load_reward_adapter, read_pairs, save_reward_adapter, tokenize_reward_pairs,
};
use serde_json::Value;

fn base_dir() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-rm-llama")
}

/// The headless body of tiny-rm-llama and its tokenizer.
fn body() -> (Decoder, Tokenizer) {
    let dir = base_dir();
    let cfg = DecoderConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let src = WeightSource::Safetensors(SafetensorsFolder::open(&dir).unwrap());
    let dec = Decoder::load_headless(gpu(), &src, cfg).unwrap();
    (dec, Tokenizer::from_file(dir.join("tokenizer.json")).unwrap())
}

/// tiny-rm-llama's pad token (config.json `pad_token_id`).
const PAD: u32 = 0;

fn options(center: Option<f64>, batch_size: usize) -> RewardOptions {
    RewardOptions { batch_size, center_rewards_coefficient: center, pad_id: Some(PAD), ..Default::default() }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|x| x.as_array().cloned().unwrap_or_else(|| vec![x.clone()]))
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn bradley_terry_loss_and_gradients_match_trl_and_torch_autograd() {
    for checkpointing in [false, true] {
        bradley_terry_against_the_fixture(checkpointing);
    }
}

fn bradley_terry_against_the_fixture(gradient_checkpointing: bool) {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(base_dir().join("peft/bt-reference.json")).unwrap())
            .unwrap();
    let (dec, tok) = body();
    let path = base_dir().join("pairs.jsonl");
    let pairs = read_pairs(&path).unwrap();
    let data = tokenize_reward_pairs(&path, &pairs, &tok, 1024).unwrap().pairs;
    let ids = |k: &str| -> Vec<Vec<u32>> {
        doc[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .collect()
    };
    assert_eq!(data.iter().map(|p| p.chosen.clone()).collect::<Vec<_>>(), ids("chosen_ids"));
    assert_eq!(data.iter().map(|p| p.rejected.clone()).collect::<Vec<_>>(), ids("rejected_ids"));
    assert_eq!(data[2].language.as_deref(), Some("es"));
    let (adapter, head) = load_reward_adapter(gpu(), &base_dir().join("peft"), dec.config()).unwrap();
    let center = doc["center_rewards_coefficient"].as_f64();
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 1).unwrap();
    let o = RewardOptions { gradient_checkpointing, ..options(center, 3) };
    let mut t = RewardTrainer::new(&dec, adapter, &head, data, AdamWConfig::default(), schedule, o).unwrap();
    let (rc, rr) = t.rewards(&[0, 1, 2]).unwrap();
    let as32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_close("rewards chosen", &as32(&rc), &f32s(&doc["rewards_chosen"]), 1e-4, 1e-4);
    assert_close("rewards rejected", &as32(&rr), &f32s(&doc["rewards_rejected"]), 1e-4, 1e-4);
    let (_, dc, dr) = babelrl::train::bradley_terry(&rc, &rr, center, 3);
    assert_close("d loss / d r_chosen", &as32(&dc), &f32s(&doc["grad_rewards_chosen"]), 1e-4, 1e-3);
    assert_close("d loss / d r_rejected", &as32(&dr), &f32s(&doc["grad_rewards_rejected"]), 1e-4, 1e-3);
    let (loss, dhead) = t.loss_and_grads(&[0, 1, 2]).unwrap();
    assert!((loss - doc["loss"].as_f64().unwrap()).abs() < 1e-5, "loss {loss} vs {}", doc["loss"]);
    assert_close("d loss / d score.weight", &as32(&dhead), &f32s(&doc["grad_score"]), 1e-4, 1e-3);
    let factors = [
        (0, Target::Q, 'A', "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        (0, Target::Q, 'B', "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
        (1, Target::Down, 'A', "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"),
        (1, Target::Down, 'B', "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"),
    ];
    for (layer, target, ab, name) in factors {
        let pg = t.lora_grads().pair(layer, target).unwrap();
        let got = gpu().read_f32(if ab == 'A' { &pg.da } else { &pg.db }).unwrap();
        let want = f32s(&doc["grad_lora"][name]);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-4, "{name}: the fixture's gradient is ~0, the test would prove nothing");
        assert_close(name, &got, &want, 2e-3 * scale, 1e-3);
    }
}

/// Synthetic pairs: the chosen side is made of words from one set, the rejected of another.
fn synthetic(n: usize, seed: u64) -> Vec<PreferencePair> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let good = ["the", "thing", "in", "rain"];
    let bad = ["123", "!", "fox", "dog"];
    let prompts = ["hello", "hi", "the quick", "theory of"];
    let words = |rng: &mut rand_chacha::ChaCha8Rng, set: &[&str]| -> String {
        (0..rng.random_range(2..5)).map(|_| format!(" {}", set[rng.random_range(0..set.len())])).collect()
    };
    (0..n)
        .map(|i| {
            let prompt = prompts[rng.random_range(0..prompts.len())].to_string();
            let (chosen, rejected) = (words(&mut rng, &good), words(&mut rng, &bad));
            let row = serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected});
            PreferencePair {
                content: babelrl::train::pairs::parse_pair(&row).unwrap(),
                language: None,
                origin: babelrl::train::PairOrigin::Line(i + 1),
            }
        })
        .collect()
}

fn trained_reward_model(out: &Path, steps: u64) -> (Vec<RewardPair>, Vec<f64>) {
    let (dec, tok) = body();
    let path = Path::new("synthetic.jsonl");
    let train = tokenize_reward_pairs(path, &synthetic(32, 1), &tok, 256).unwrap().pairs;
    let held_out = tokenize_reward_pairs(path, &synthetic(16, 2), &tok, 256).unwrap().pairs;
    let mut cfg = LoraConfig::new(4, 8.0, &Target::ALL).unwrap();
    cfg.base_model = Some("..".into());
    let adapter = Adapter::init(gpu(), cfg, dec.config(), 3).unwrap();
    let head = initial_head(&base_dir(), dec.config(), 3).unwrap();
    let optim = AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, steps).unwrap();
    let mut t = RewardTrainer::new(&dec, adapter, &head, train, optim, schedule, options(None, 8)).unwrap();
    let first = t.step().unwrap();
    let mut last = first;
    for _ in 1..steps {
        last = t.step().unwrap();
    }
    assert!(last.loss < first.loss, "training did not lower the loss: {first:?} → {last:?}");
    t.save(out, None).unwrap();
    // The trainer's own scores of the held-out pairs, for the loader to reproduce.
    let held = held_out.clone();
    let mut eval = RewardTrainer::new(
        &dec,
        load_reward_adapter(gpu(), out, dec.config()).unwrap().0,
        &t.head().unwrap(),
        held,
        AdamWConfig::default(),
        Schedule::new(SchedulerType::Constant, 0.0, 1).unwrap(),
        options(None, 16),
    )
    .unwrap();
    let idx: Vec<usize> = (0..held_out.len()).collect();
    let (rc, rr) = eval.rewards(&idx).unwrap();
    (held_out, rc.into_iter().chain(rr).collect())
}

#[test]
fn a_tiny_reward_model_learns_a_separable_preference_set_and_loads_back_scoring_the_same() {
    let out = scratch("rm-train");
    // The adapter's base is ".." in its config: put it where that resolves.
    let adapter_dir = out.join("rm");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base_dir().join(f), out.join(f)).unwrap();
    }
    let (held_out, trainer_scores) = trained_reward_model(&adapter_dir, 30);
    let rm = RewardModel::load(gpu(), &adapter_dir).unwrap();
    let seqs: Vec<Vec<u32>> = held_out
        .iter()
        .map(|p| p.chosen.clone())
        .chain(held_out.iter().map(|p| p.rejected.clone()))
        .collect();
    let scores = rm.score_ids(&seqs).unwrap();
    let trainer32: Vec<f32> = trainer_scores.iter().map(|&v| v as f32).collect();
    assert_close("RewardModel scores vs the trainer's", &scores, &trainer32, 1e-4, 1e-4);
    let n = held_out.len();
    let right = (0..n).filter(|&i| scores[i] > scores[n + i]).count();
    assert!(right as f64 / n as f64 >= 0.9, "held-out pairwise accuracy {right}/{n}");
}

#[test]
fn the_head_round_trips_through_save_and_load() {
    let (dec, _) = body();
    let (adapter, head) = load_reward_adapter(gpu(), &base_dir().join("peft"), dec.config()).unwrap();
    let tmp = scratch("rm-save");
    let out = tmp.join("rm");
    save_reward_adapter(&adapter, &head, &out, None).unwrap();
    let (again, head2) = load_reward_adapter(gpu(), &out, dec.config()).unwrap();
    assert_eq!(head2, head);
    assert_eq!(again.to_host().unwrap(), adapter.to_host().unwrap());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier", "score"]));
}

#[test]
fn a_reward_model_folder_without_a_head_is_refused_clearly() {
    let (dec, _) = body();
    // A causal-LM LoRA adapter: no score head.
    let lm_adapter = repo_root().join("tests/fixtures/tiny-llama/lora");
    let e = load_reward_adapter(gpu(), &lm_adapter, dec.config()).err().unwrap().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("no head"), "{e}");
    // A SEQ_CLS adapter whose weights lack `score`.
    let tmp = scratch("rm-headless");
    let out = tmp.join("rm");
    let (adapter, _) = load_reward_adapter(gpu(), &base_dir().join("peft"), dec.config()).unwrap();
    adapter.save_peft(&out).unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    c["task_type"] = "SEQ_CLS".into();
    c["modules_to_save"] = serde_json::json!(["score"]);
    c["base_model_name_or_path"] = base_dir().to_string_lossy().into_owned().into();
    std::fs::write(out.join("adapter_config.json"), c.to_string()).unwrap();
    let e = load_reward_adapter(gpu(), &out, dec.config()).err().unwrap().to_string();
    assert!(e.contains("base_model.model.score.weight") && e.contains("adapter_model.safetensors"), "{e}");
    let e = RewardModel::load(gpu(), &out).unwrap_err().to_string();
    assert!(e.contains("base_model.model.score.weight"), "{e}");
}

#[test]
fn bad_pair_files_name_the_file_and_line() {
    let dir = scratch("rm-pairs");
    let f = dir.join("pairs.jsonl");
    std::fs::write(&f, "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"a\", \"chosen\": \" b\"}\n").unwrap();
    let e = read_pairs(&f).unwrap_err().to_string();
    assert!(e.contains("pairs.jsonl") && e.contains("line 2") && e.contains("no `rejected`"), "{e}");
    std::fs::write(&f, "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" b\"}\n").unwrap();
    let e = read_pairs(&f).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("the same"), "{e}");
    // Over max_length: left out as TRL's RewardTrainer filters it; an error when no pair is left.
    std::fs::write(
        &f,
        "{\"prompt\": \"a\", \"chosen\": \" the thing and the other thing\", \"rejected\": \" b\"}\n\
         {\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n",
    )
    .unwrap();
    let (_, tok) = body();
    let pairs = read_pairs(&f).unwrap();
    let longest = |p: &babelrl::train::RewardPair| p.chosen.len().max(p.rejected.len());
    let all = tokenize_reward_pairs(&f, &pairs, &tok, 1000).unwrap();
    let limit = longest(&all.pairs[1]);
    assert!(longest(&all.pairs[0]) > limit, "the first pair must be the longer one: {:?}", all.pairs);
    let kept = tokenize_reward_pairs(&f, &pairs, &tok, limit).unwrap();
    assert_eq!(kept.pairs.len(), 1);
    assert_eq!(kept.pairs[0].chosen, all.pairs[1].chosen);
    assert_eq!(kept.too_long.iter().map(|o| o.to_string()).collect::<Vec<_>>(), ["line 1"]);
    let e = tokenize_reward_pairs(&f, &pairs[..1], &tok, limit).unwrap_err().to_string();
    assert!(e.contains("pairs.jsonl") && e.contains("every pair") && e.contains("max_length"), "{e}");
}

/// Writes tests/fixtures/tiny-rm-llama/babelrl-rm/: peft/ trained by babelrl for a few steps on
/// pairs.jsonl (run by scripts/fixtures_reward_train.py, which then scores it with PEFT).
#[test]
#[ignore = "writes a fixture; run by scripts/make_fixtures.py reward-train"]
fn write_babelrl_trained_reward_model() {
    let (dec, tok) = body();
    let path = base_dir().join("pairs.jsonl");
    let data = tokenize_reward_pairs(&path, &read_pairs(&path).unwrap(), &tok, 1024).unwrap().pairs;
    let (adapter, head) = load_reward_adapter(gpu(), &base_dir().join("peft"), dec.config()).unwrap();
    let optim = AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 3).unwrap();
    let mut t =
        RewardTrainer::new(&dec, adapter, &head, data, optim, schedule, options(Some(0.01), 3)).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    let out = base_dir().join("babelrl-rm");
    // The adapter keeps peft/'s base, "..": tiny-rm-llama from babelrl-rm/ too.
    t.save(&out, None).unwrap();
}
