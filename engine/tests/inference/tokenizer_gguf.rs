//! `Tokenizer::from_gguf` / `from_file` against token ids recorded from transformers and `tokenizers`:
//! the tiny-llama and tiny-spm GGUF fixtures (always), SmolLM2-135M-Instruct and Qwen2.5-Coder (when
//! the models are in `$BABELRL_CACHE/models`; skipped with a message otherwise).
//! Run: `cargo test -p babelrl --test inference tokenizer_gguf::`.

use std::path::PathBuf;

use babelrl::Error;
use babelrl::model::gguf::Gguf;
use babelrl::text::{ChatMessage, Tokenizer};
use serde_json::Value;

use crate::common::scratch;
use crate::gguf_support;
use gguf_support::Writer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn cache_model(rel: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("BABELRL_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/babelrl")
    });
    let p = cache.join("models").join(rel);
    if p.exists() {
        Some(p)
    } else {
        let why = format!("{} is absent (run scripts/fetch_models.sh --with-qwen)", p.display());
        assert!(std::env::var_os("BABELRL_REQUIRE_ALL").is_none(), "{why} (BABELRL_REQUIRE_ALL is set)");
        eprintln!("SKIP: {why}");
        None
    }
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tiny_llama_gguf_matches_reference() {
    let dir = fixtures().join("tiny-llama-gguf");
    let g = Gguf::open(dir.join("tiny-llama.gguf")).unwrap();
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    let from_json = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let reference = json(dir.join("tokenizer-reference.json"));
    for case in reference["strings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(
            want,
            ids(&case["transformers_gguf_ids"]),
            "{text:?}: the fixture's two references disagree"
        );
        assert_eq!(from_gguf.encode(text, true).unwrap(), want, "from_gguf {text:?}");
        assert_eq!(from_json.encode(text, true).unwrap(), want, "from_file {text:?}");
        assert_eq!(from_gguf.decode(&want, false).unwrap(), text, "decode {text:?}");
    }
    assert_eq!(from_gguf.vocab_size(), 300);
    assert_eq!(from_gguf.bos_id(), Some(1));
    assert_eq!(from_gguf.eos_ids().first(), Some(&2));
    assert!(from_gguf.chat_template().unwrap().contains("<|im_start|>"));
    assert!(from_gguf.decode(&[300], false).is_err());
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = cache_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let g = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let r = json(fixtures().join("smollm2-reference.json"));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(r["bos_token_id"].as_u64().unwrap() as u32));
    assert_eq!(tok.eos_ids()[0], r["eos_token_id"].as_u64().unwrap() as u32);
    assert_eq!(tok.chat_template(), r["chat_template"].as_str());

    for p in r["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&p["prompt_ids"]), "prompt {text:?}");
        if let Some(c) = p["completion"].as_str() {
            assert_eq!(tok.encode(c, false).unwrap(), ids(&p["completion_ids"]), "completion {c:?}");
        }
        let greedy = ids(&p["greedy_ids"]);
        assert_eq!(tok.decode(&greedy, false).unwrap(), p["greedy_text"].as_str().unwrap());
    }
    for e in r["extra_tokenization"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let want = ids(&e["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), e["decoded"].as_str().unwrap());
    }

    // Chat prompts: template from the GGUF, rendered and tokenized as transformers did.
    let chat = tok.chat_template_renderer().unwrap().unwrap();
    for p in r["prompts"].as_array().unwrap().iter().filter(|p| p["kind"] == "chat") {
        let msgs: Vec<ChatMessage> = serde_json::from_value(p["messages"].clone()).unwrap();
        assert_eq!(chat.render(&msgs, true).unwrap(), p["text"].as_str().unwrap());
    }
    let cr = &r["chat_render"];
    let msgs: Vec<ChatMessage> = serde_json::from_value(cr["messages"].clone()).unwrap();
    let agp = cr["add_generation_prompt"].as_bool().unwrap();
    assert_eq!(chat.render(&msgs, agp).unwrap(), cr["rendered"].as_str().unwrap());

    // Special tokens survive decoding unless skipped.
    let im = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!((im[0], *im.last().unwrap()), (1, 2));
    assert_eq!(tok.decode(&im, true).unwrap(), "user\nhi");
    assert!(tok.eos_ids().contains(&0), "<|endoftext|> ends generation as in llama.cpp");
}

#[test]
fn qwen25_gguf_matches_transformers() {
    let Some(path) = cache_model("qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q.gguf") else {
        return;
    };
    let g = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let r = json(fixtures().join("qwen25-tokenizer-reference.json"));
    assert_eq!(tok.vocab_size() as u64, r["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eos_ids()[0] as u64, r["eos_token_id"].as_u64().unwrap());
    let mut nfc_differs = 0;
    for c in r["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        // Qwen2's tokenizer.json normalises to NFC; transformers' GGUF loader does not.
        let want_nfc = ids(&c["ids_nfc"]);
        nfc_differs += usize::from(want != want_nfc);
        assert_eq!(tok.encode(text, true).unwrap(), want_nfc, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), c["decoded"].as_str().unwrap(), "{text:?}");
    }
    assert_eq!(nfc_differs, 1, "exactly one reference string is not in NFC");
}

/// A byte-level vocabulary over "a", "b", "ab" plus two control tokens.
fn tiny_vocab(w: &mut Writer, pre: &str) {
    w.kv_str("general.architecture", "llama")
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", pre)
        .kv_str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab"])
        .kv_i32_array("tokenizer.ggml.token_type", &[3, 3, 1, 1, 1, 1, 1])
        .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 1);
}

#[test]
fn add_bos_and_special_tokens() {
    let mut w = Writer::new();
    tiny_vocab(&mut w, "smollm");
    w.kv_bool("tokenizer.ggml.add_bos_token", true);
    let tok = Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.bytes()).unwrap()).unwrap();
    assert_eq!(tok.encode("ab ab", true).unwrap(), vec![0, 4, 6]);
    assert_eq!(tok.encode("ab ab", false).unwrap(), vec![4, 6]);
    assert_eq!(tok.encode("<s>ab</s>", false).unwrap(), vec![0, 4, 1]);
    assert_eq!(tok.decode(&[0, 4, 6, 1], true).unwrap(), "ab ab");
    assert_eq!(tok.decode(&[0, 4, 6, 1], false).unwrap(), "<s>ab ab</s>");
    assert_eq!(tok.eos_ids(), &[1]);
    assert_eq!(tok.token_to_id("Ġab"), Some(6));
    assert_eq!(tok.id_to_token(4).as_deref(), Some("ab"));
}

#[test]
fn unknown_pre_tokenizer_and_bad_ids_are_errors() {
    let mut w = Writer::new();
    tiny_vocab(&mut w, "mystery-pre");
    let e = Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.bytes()).unwrap()).unwrap_err();
    assert!(matches!(&e, Error::Unsupported { .. }) && e.to_string().contains("mystery-pre"), "{e}");

    let mut w = Writer::new();
    tiny_vocab(&mut w, "gpt-2");
    w.kv_u32("tokenizer.ggml.padding_token_id", 70);
    let e = Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.bytes()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("padding_token_id = 70"), "{e}");

    let mut w = Writer::new();
    w.kv_str("tokenizer.ggml.model", "gpt2");
    let e = Tokenizer::from_gguf(&Gguf::from_bytes("t.gguf", w.bytes()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.tokens") && e.to_string().contains("t.gguf"), "{e}");
}

#[test]
fn sentencepiece_gguf_matches_sentencepiece() {
    let dir = fixtures().join("tiny-spm-gguf");
    let tok = Tokenizer::from_gguf(&Gguf::open(dir.join("tiny-spm.gguf")).unwrap()).unwrap();
    let r = json(dir.join("reference.json"));
    assert_eq!(tok.vocab_size() as u64, r["vocab_size"].as_u64().unwrap());
    assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(1), &[2][..]));
    for c in r["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), c["decoded"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn from_file_reads_configs_next_to_tokenizer_json() {
    let dir = scratch("tok");
    std::fs::copy(fixtures().join("tiny-llama-gguf/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let config = r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": "<|endoftext|>", "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [2, 0]}"#).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_ids(), tok.pad_id()), (Some(1), &[2, 0][..], Some(0)));
    let chat = tok.chat_template_renderer().unwrap().unwrap();
    assert_eq!(chat.render(&[ChatMessage::new("user", "hi")], false).unwrap(), "<|im_start|>hi<|im_end|>");

    std::fs::write(dir.join("generation_config.json"), "{not json").unwrap();
    let e = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_err().to_string();
    assert!(e.contains("generation_config.json") && e.contains("invalid JSON"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}
