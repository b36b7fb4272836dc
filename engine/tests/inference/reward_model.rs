//! Scalar-head reward models against transformers on the committed tiny fixtures (scripts/make_fixtures.py
//! target `reward-model`): the input ids TRL's RewardTrainer builds, and the scores of several pairs of
//! different lengths scored in one batch, for a Llama and a Qwen2 `*ForSequenceClassification` folder
//! and a PEFT SEQ_CLS adapter (LoRA + `score` in modules_to_save); and clear errors for folders that are
//! not reward models.

use crate::common::{gpu, repo_root, scratch};

use std::path::{Path, PathBuf};

use babelrl::model::RewardModel;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// Ids equal transformers'; scores within 1e-4 relative (plus 1e-5 absolute) of transformers'.
fn check(dir: &Path) {
    let rm = RewardModel::load(gpu(), dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pairs = expected["pairs"].as_array().unwrap();
    let text = |p: &Value, k: &str| p[k].as_str().unwrap().to_string();
    let prompts: Vec<String> = pairs.iter().map(|p| text(p, "prompt")).collect();
    let completions: Vec<String> = pairs.iter().map(|p| text(p, "completion")).collect();
    let mut lengths = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let want: Vec<u32> =
            p["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(
            rm.input_ids(&prompts[i], &completions[i]).unwrap(),
            want,
            "{}: ids of pair {i}",
            dir.display()
        );
        lengths.push(want.len());
    }
    lengths.dedup();
    assert!(lengths.len() >= 3, "the fixture's pairs should differ in length: {lengths:?}");
    let got = rm.score(&prompts, &completions).unwrap();
    let want: Vec<f32> = pairs.iter().map(|p| p["score"].as_f64().unwrap() as f32).collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs() + 1e-5,
            "{}: pair {i}: score {g}, transformers {w}",
            dir.display()
        );
    }
    // One at a time equals the batch (each sequence attends only to itself).
    for i in [0, pairs.len() - 1] {
        let one = rm.score(&prompts[i..=i], &completions[i..=i]).unwrap();
        assert!(
            (one[0] - got[i]).abs() <= 1e-5 * got[i].abs().max(1.0),
            "pair {i} alone: {} vs {}",
            one[0],
            got[i]
        );
    }
}

#[test]
fn scores_match_transformers_for_llama_and_qwen2_sequence_classification() {
    check(&fixture("tiny-rm-llama"));
    check(&fixture("tiny-rm-qwen2"));
}

#[test]
fn scores_match_peft_for_a_seq_cls_lora_adapter_with_its_score_head() {
    check(&fixture("tiny-rm-llama/peft"));
}

#[test]
fn a_group_of_samples_is_scored_in_one_gpu_pass() {
    // What `reward-model-score` sends for one group (RunServices passes up to 64 pairs per call).
    let rm = RewardModel::load(gpu(), &fixture("tiny-rm-llama/babelrl-rm")).unwrap();
    let lengths: Vec<usize> = (0..64).map(|i| 20 + i % 37).collect();
    assert_eq!(rm.pass_ranges(&lengths), vec![0..64]);
    // Longer inputs split at the token budget, in order, covering every sequence once.
    let long = vec![1000; 20];
    let ranges = rm.pass_ranges(&long);
    assert!(ranges.len() > 1 && ranges[0].start == 0 && ranges.last().unwrap().end == 20, "{ranges:?}");
    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "{ranges:?}");
}

#[test]
fn a_reward_model_babelrl_trained_and_saved_scores_the_same_in_peft() {
    // tiny-rm-llama/babelrl-rm: peft/ trained three steps by RewardTrainer and saved by babelrl; its
    // expected.json holds PEFT's scores with it (scripts/fixtures_reward_train.py).
    check(&fixture("tiny-rm-llama/babelrl-rm"));
}

#[test]
fn the_score_position_is_the_last_token_that_is_not_pad_as_transformers_picks_it() {
    // tiny-rm-qwen2 pads with its EOS (TRL's fallback): the head reads the token before the EOS.
    let rm = RewardModel::load(gpu(), &fixture("tiny-rm-qwen2")).unwrap();
    let ids = rm.input_ids("hello", " world").unwrap();
    let eos = *rm.tokenizer().eos_ids().first().unwrap();
    assert_eq!(*ids.last().unwrap(), eos);
    assert_eq!(rm.score_position(&ids), ids.len() - 2);
    let rm = RewardModel::load(gpu(), &fixture("tiny-rm-llama")).unwrap();
    let ids = rm.input_ids("hello", " world").unwrap();
    assert_eq!(rm.score_position(&ids), ids.len() - 1);
}

#[test]
fn folders_that_are_not_reward_models_are_clear_errors() {
    let tmp = scratch("rm-bad");
    // A causal LM: no score head.
    let e = RewardModel::load(gpu(), &fixture("tiny-llama")).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("ForSequenceClassification"), "{e}");
    // A causal-LM LoRA adapter.
    let e = RewardModel::load(gpu(), &fixture("tiny-llama/lora")).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("SEQ_CLS"), "{e}");
    // A sequence-classification folder without score.weight.
    let src = fixture("tiny-rm-llama");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    std::fs::copy(fixture("tiny-llama/model.safetensors"), tmp.join("model.safetensors")).unwrap();
    let e = RewardModel::load(gpu(), &tmp).unwrap_err().to_string();
    assert!(e.contains("score.weight") && e.contains("model.safetensors"), "{e}");
    // A PEFT adapter whose base is not here.
    let adapter = tmp.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let peft = src.join("peft");
    std::fs::copy(peft.join("adapter_model.safetensors"), adapter.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read_to_string(peft.join("adapter_config.json")).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), config.replace("\"..\"", "\"no/such/base\""))
        .unwrap();
    let e = RewardModel::load(gpu(), &adapter).unwrap_err().to_string();
    assert!(e.contains("base_model_name_or_path") && e.contains("no/such/base"), "{e}");
    // Missing folder.
    let e = RewardModel::load(gpu(), &tmp.join("absent")).unwrap_err().to_string();
    assert!(e.contains("absent"), "{e}");
}

/// A chat prompt is scored as the reward model's conversational training pairs are tokenized: the
/// messages with the completion as the assistant's reply, rendered whole with the model's chat template
/// (best-of-n and on-policy DPO judge chat prompts this way), not as `prompt + completion + EOS` text.
#[test]
fn a_chat_prompt_is_scored_as_conversational_training_pairs_are_tokenized() {
    use babelrl::model::RmPrompt;
    use babelrl::text::ChatMessage;
    use babelrl::train::{read_pairs, tokenize_reward_pairs};

    let dir = scratch("rm-chat");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-rm-llama").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}{% if m.role == 'user' %}hello {% endif %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let rm = RewardModel::load(gpu(), &dir).unwrap();
    let pairs_file = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs_file,
        "{\"prompt\": [{\"role\": \"user\", \"content\": \"the quick brown fox\"}], \
         \"chosen\": [{\"role\": \"assistant\", \"content\": \" jumps over the lazy dog.\"}], \
         \"rejected\": [{\"role\": \"assistant\", \"content\": \" sat.\"}]}\n",
    )
    .unwrap();
    let pairs = read_pairs(&pairs_file).unwrap();
    let trained = tokenize_reward_pairs(&pairs_file, &pairs, rm.tokenizer(), 1000).unwrap().pairs;
    let messages = [ChatMessage::new("user", "the quick brown fox")];
    let chosen = rm.chat_input_ids(&messages, " jumps over the lazy dog.").unwrap();
    assert_eq!(chosen, trained[0].chosen);
    assert_ne!(chosen, rm.input_ids("the quick brown fox", " jumps over the lazy dog.").unwrap());
    let completions = [" jumps over the lazy dog.".to_string(), " sat.".to_string()];
    let scores = rm.score_prompts(&[RmPrompt::Chat(&messages); 2], &completions).unwrap();
    let direct = rm.score_ids(&[trained[0].chosen.clone(), trained[0].rejected.clone()]).unwrap();
    assert_eq!(scores, direct);
    // Text prompts score as before.
    let text = rm.score_prompts(&[RmPrompt::Text("the quick brown fox"); 2], &completions).unwrap();
    assert_eq!(
        text,
        rm.score(&["the quick brown fox".into(), "the quick brown fox".into()], &completions).unwrap()
    );
}
