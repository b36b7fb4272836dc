//! SFT data loading (`babelrl::train::load_sft_jsonl`) against TRL: the files in tests/fixtures/sft-data/
//! tokenized with SmolLM2-135M-Instruct's tokenizer give TRL's sequences and loss masks
//! (`smollm2-trl.json`, made by scripts/sft_data_fixture.py; skipped without the model), and the tiny
//! Llama GGUF's tokenizer (always present) checks BOS/EOS handling and the errors of bad files.
//! Run: `cargo test -p babelrl --test inference train_data::`.

use std::path::{Path, PathBuf};

use babelrl::model::gguf::Gguf;
use babelrl::text::Tokenizer;
use babelrl::train::{SftExample, load_sft_jsonl};
use serde_json::Value;

use crate::common::{model_dir, repo_root};
use crate::gguf_support::Writer;

fn data(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/sft-data").join(name)
}

fn tiny_llama() -> Tokenizer {
    let path = repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf");
    Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap()
}

/// A data file holding `text` in a fresh temporary folder.
fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn error(tok: &Tokenizer, text: &str, max_length: usize) -> String {
    let (_dir, path) = file(text);
    let e = load_sft_jsonl(&path, tok, max_length).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "the error names the file: {e}");
    e
}

#[test]
fn smollm2_sequences_and_loss_masks_match_trl() {
    let Some(dir) = model_dir("smollm2-135m-instruct") else { return };
    let tok =
        Tokenizer::from_gguf(&Gguf::open(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap()).unwrap();
    let text = std::fs::read_to_string(data("smollm2-trl.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    for (name, rows) in reference["files"].as_object().unwrap() {
        let got = load_sft_jsonl(&data(name), &tok, 1024).unwrap_or_else(|e| panic!("{e}"));
        let rows = rows.as_array().unwrap();
        assert_eq!(got.len(), rows.len(), "{name}: examples");
        for (ex, row) in got.iter().zip(rows) {
            let what = format!("{name} line {}", ex.line);
            assert_eq!(ex.line as u64, row["line"].as_u64().unwrap(), "{what}: line number");
            let seq: Vec<i64> = ex.prompt.iter().chain(&ex.completion).map(|&t| t as i64).collect();
            assert_eq!(seq, ids(&row["input_ids"]), "{what}: tokens differ from TRL's");
            let labels = ids(&row["labels"]);
            let masked = labels.iter().take_while(|&&l| l == -100).count();
            assert!(labels[masked..].iter().all(|&l| l != -100), "{what}: TRL masks only a prefix");
            if name == "chat.jsonl" {
                // TRL trains on whole conversations here; babelrl on the last answer, after the
                // template's generation prompt (`<|im_start|>assistant\n`) and through `<|im_end|>\n`.
                assert_eq!(masked, 0, "{what}");
                assert!(ex.prompt.ends_with(&[1, 520, 9531, 198]), "{what}: {:?}", ex.prompt);
                assert_eq!(ex.completion[ex.completion.len() - 2..], [2, 198], "{what}");
            } else {
                assert_eq!(ex.prompt.len(), masked, "{what}: the loss must start where TRL's does");
            }
        }
    }
    // The last conversation's completion is its last answer only.
    let chat = load_sft_jsonl(&data("chat.jsonl"), &tok, 1024).unwrap();
    assert_eq!(tok.decode(&chat[2].completion, false).unwrap(), "Hallo!<|im_end|>\n");
    assert!(
        tok.decode(&chat[2].prompt, false).unwrap().ends_with("German.<|im_end|>\n<|im_start|>assistant\n")
    );
    // A text completion that already ends with EOS gets no second one.
    let text = load_sft_jsonl(&data("text.jsonl"), &tok, 1024).unwrap();
    assert_eq!(tok.decode(&text[2].completion, false).unwrap(), " 4<|im_end|>");
}

/// A byte-level vocabulary over "a", "b", "ab" whose encoder adds BOS (0) and EOS (1), without a chat
/// template.
fn bos_eos_vocab() -> Tokenizer {
    let mut w = Writer::new();
    w.kv_str("general.architecture", "llama")
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "smollm")
        .kv_str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab"])
        .kv_i32_array("tokenizer.ggml.token_type", &[3, 3, 1, 1, 1, 1, 1])
        .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 1)
        .kv_bool("tokenizer.ggml.add_bos_token", true)
        .kv_bool("tokenizer.ggml.add_eos_token", true);
    let tok = Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.bytes()).unwrap()).unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), [0, 4, 1], "the encoder adds BOS and EOS");
    tok
}

#[test]
fn text_pairs_get_bos_before_the_prompt_and_eos_after_the_completion_only() {
    let tok = bos_eos_vocab();
    let (_dir, path) = file("{\"prompt\": \"ab\", \"completion\": \" ab a\"}\n\n  \n");
    let got = load_sft_jsonl(&path, &tok, 64).unwrap();
    let want = SftExample { prompt: vec![0, 4], completion: vec![6, 5, 2, 1], line: 1 };
    assert_eq!(got, std::slice::from_ref(&want));
    // A completion ending with EOS keeps just that one.
    let (_dir, path) = file("{\"prompt\": \"ab\", \"completion\": \" ab a</s>\"}\n");
    assert_eq!(load_sft_jsonl(&path, &tok, 64).unwrap(), [want]);
    // Exactly max_length tokens fit; one fewer allowed is an error naming the line and the numbers.
    assert_eq!(load_sft_jsonl(&path, &tok, 6).unwrap().len(), 1);
    let e = error(&tok, "\n{\"prompt\": \"ab\", \"completion\": \" ab a\"}\n", 5);
    assert!(e.contains("line 2: 6 tokens; max_length is 5: shorten it or raise [sft] max_length"), "{e}");
    // SmolLM2-style tokenizers add nothing: an empty prompt would leave the first completion token
    // with nothing to be predicted from.
    let e = error(&tiny_llama(), "{\"prompt\": \"\", \"completion\": \"a\"}\n", 64);
    assert!(e.contains("line 1: the prompt is empty"), "{e}");
}

#[test]
fn chat_lines_use_the_models_template_and_need_one() {
    let tok = tiny_llama();
    let line = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
    let (_dir, path) = file(&format!("{line}\n"));
    let got = load_sft_jsonl(&path, &tok, 256).unwrap();
    let t = tok.chat_template_renderer().unwrap().unwrap();
    let msgs =
        [babelrl::text::ChatMessage::new("user", "hi"), babelrl::text::ChatMessage::new("assistant", "yo")];
    let prompt = t.render(&msgs[..1], true).unwrap();
    let full = t.render(&msgs, false).unwrap();
    assert_eq!(got[0].prompt, tok.encode(&prompt, false).unwrap());
    assert_eq!(got[0].completion, tok.encode(&full[prompt.len()..], false).unwrap());
    assert!(tok.decode(&got[0].completion, false).unwrap().starts_with("yo"));
    // A tokenizer without a chat template refuses chat data, by line.
    let bare = bos_eos_vocab();
    assert!(bare.chat_template().is_none());
    let e = error(&bare, &format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{line}\n"), 256);
    assert!(e.contains("line 2: chat messages need the model's chat template"), "{e}");
}

#[test]
fn bad_files_are_errors_naming_file_and_line() {
    let tok = tiny_llama();
    let ok = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
    for (text, says) in [
        (format!("{ok}{{\"prompt\": \"a\", \"completion\": \n"), "line 2: not valid JSON"),
        (
            format!("{ok}\n{{\"prompt\": \"a\"}}\n"),
            "line 3: no completion: the line has a prompt but no completion",
        ),
        ("{\"prompt\": \"a\", \"completion\": \"\"}\n".into(), "line 1: no completion"),
        (format!("{ok}{{\"text\": \"a\"}}\n"), "line 2: neither data format"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n".into(),
            "line 1: the last message is from `user`, not `assistant`",
        ),
        (
            String::new(),
            "empty data set: the file holds no examples; add lines of the form {\"prompt\": \"…\"",
        ),
        ("\n \n\n".into(), "empty data set"),
    ] {
        let e = error(&tok, &text, 64);
        assert!(e.contains(says), "{text:?}: {e}");
    }
    let absent = Path::new("/nonexistent/train.jsonl");
    let e = load_sft_jsonl(absent, &tok, 64).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/train.jsonl"), "{e}");
}
