//! Fuzzing of everything the engine reads from files: GGUF (header, metadata, tensor infos, every
//! quantized type, the tokenizer rebuilt from metadata, llama's q/k un-permute), Hugging Face folders
//! (config.json, safetensors headers, encoder settings), tokenizer.json with its chat template, chat
//! templates, JSONL data sets and TOML run files; what `babelrl train` reads (run files, SFT data,
//! checkpoints) is in `train`. Each target mutates committed seed files (see `fuzz_support`) and checks
//! that loading gives `Ok` or an error naming the file, never a panic and never an allocation out of
//! proportion to the file. A short deterministic run here; long runs with `scripts/fuzz.sh`. Run:
//! `cargo test -p babelrl --test inference fuzz_loaders::`.

use std::path::{Path, PathBuf};

use babelrl::model::gguf::Gguf;
use babelrl::model::quant::GgmlType;
use babelrl::model::weights::{SafetensorsFolder, WeightSource};
use babelrl::model::{Arch, DecoderConfig, EncoderConfig, EncoderOptions, load_language_model};
use babelrl::plugin::{RunRewards, read_jsonl, sample_from_json};
use babelrl::text::{ChatMessage, ChatTemplate, Tokenizer};
use proptest::prelude::*;
use serde_json::Value;

use crate::common::{gpu, repo_root};
use crate::fuzz_support::{Case, JsonEdit, apply, apply_json, edits, fuzz, gguf_fields, json_edits};
use crate::gguf_support::Writer;

mod train;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const TEXT: &str = "Hello wörld 12345 <|im_end|> 😀 \u{0}";

/// Tokens that matter to JSON, TOML, Jinja and GGUF tokenizer metadata, inserted by `Edit::Token`.
const DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "[[reward]]",
    "on_error",
    "\"",
    "'",
    ",",
    ":",
    "=",
    "\n",
    "\\",
    "\\u",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "nan",
    "inf",
    "true",
    "null",
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "for ",
    "endfor",
    " if ",
    "endif",
    "messages",
    "loop.",
    "|tojson",
    "raise_exception(",
    "strftime_now('%",
    "namespace(",
    "name",
    "path",
    "weight",
    "limits",
    "deadline_ms",
    "memory_mib",
    "fuel",
    "config",
    "capabilities",
    "prompt",
    "completion",
    "reference",
    "language",
    "<0x",
    "▁",
    "Ġ",
    "\u{feff}",
    "\r",
    "\u{1b}[2J",
];

/// Hugging Face names of every tensor a decoder with `cfg` asks for.
fn hf_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut names: Vec<String> =
        ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"].map(String::from).to_vec();
    for l in 0..cfg.layers.min(64) {
        for t in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
            "self_attn.o_proj.weight",
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("model.layers.{l}.{t}"));
        }
    }
    names
}

/// A tokenizer's work on a fixed text: encode, decode, the chat template compiled and rendered.
fn use_tokenizer(case: &mut Case, tok: &Tokenizer) {
    if let Some(ids) = case.step("encode", || tok.encode(TEXT, true)) {
        case.step("decode", || tok.decode(&ids, false));
    }
    let bad = [0, u32::MAX];
    case.step_any("decode out of range", || tok.decode(&bad, true));
    if let Some(Some(t)) = case.step("chat template", || tok.chat_template_renderer()) {
        let msgs = [ChatMessage::new("system", "s"), ChatMessage::new("user", TEXT)];
        case.step_any("render", || t.render(&msgs, true));
    }
}

/// Everything the loader does with a GGUF file short of the GPU upload.
fn load_gguf_on_host(case: &mut Case, path: &Path, bytes: Vec<u8>) {
    let Some(g) = case.step("parse", || Gguf::from_bytes(path, bytes)) else { return };
    for t in g.tensors().to_vec() {
        if t.dtype.can_dequantize() {
            case.step("tensor_f32", || g.tensor_f32(&t.name));
        }
    }
    if let Some(tok) = case.step("tokenizer", || Tokenizer::from_gguf(&g)) {
        use_tokenizer(case, &tok);
    }
    let Some(cfg) = case.step("config", || DecoderConfig::from_gguf(&g)) else { return };
    let source = WeightSource::Gguf {
        file: g,
        n_head: cfg.n_head,
        n_kv_head: cfg.n_kv_head,
        permuted_qk: cfg.arch == Arch::Llama,
    };
    for name in hf_names(&cfg) {
        case.step("weights", || source.get(&name));
    }
}

fn gguf_target(name: &str, seed: &Path, cases: u32) {
    let seed_bytes = read(seed);
    let fields = gguf_fields(&seed_bytes);
    let path = PathBuf::from(format!("fuzz/{name}.gguf"));
    fuzz(name, cases, edits(6), |e| {
        let mut bytes = seed_bytes.clone();
        apply(&mut bytes, e, &fields, DICT);
        let mut case = Case::new(path.display().to_string());
        let size = bytes.len();
        load_gguf_on_host(&mut case, &path, bytes);
        (case, size)
    });
}

#[test]
fn gguf_llama_on_the_host() {
    gguf_target("gguf-llama", &fixture("tiny-llama-gguf/tiny-llama.gguf"), 1000);
}

#[test]
fn gguf_spm_tokenizer() {
    gguf_target("gguf-spm", &fixture("tiny-spm-gguf/tiny-spm.gguf"), 500);
}

/// A seed with one tensor of every type the engine dequantizes (random blocks) plus a 3-D, a 1-D and a
/// 0-D tensor, so that type and dimension edits reach every dequantization loop.
fn quant_seed() -> Vec<u8> {
    let mut w = Writer::new();
    w.kv_str("general.architecture", "llama");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    };
    for id in 0..40u32 {
        let Some(ty) = GgmlType::from_id(id) else { continue };
        if !ty.can_dequantize() {
            continue;
        }
        let (block, size) = ty.block_layout();
        w.tensor(&format!("t{id}"), &[block as u64, 2], id, &random(2 * size));
    }
    w.tensor("three_d", &[32, 2, 2], 0, &random(32 * 4 * 4));
    w.tensor("one_d", &[8], 1, &random(16));
    w.tensor("zero_d", &[], 0, &random(4));
    w.bytes()
}

#[test]
fn gguf_every_quant_type() {
    let seed_bytes = quant_seed();
    let fields = gguf_fields(&seed_bytes);
    let path = PathBuf::from("fuzz/quant.gguf");
    fuzz("gguf-quant", 1500, edits(4), |e| {
        let mut bytes = seed_bytes.clone();
        apply(&mut bytes, e, &fields, &[]);
        let mut case = Case::new("fuzz/quant.gguf");
        let size = bytes.len();
        if let Some(g) = case.step("parse", || Gguf::from_bytes(&path, bytes)) {
            for t in g.tensors().to_vec() {
                case.step("tensor_f32", || g.tensor_f32(&t.name));
                case.step("tensor_f16", || g.tensor_f16(&t.name));
            }
        }
        (case, size)
    });
}

/// Known before the fuzzing: a llama GGUF whose q (or k) tensor has no dimensions passed the parser and
/// panicked in the un-permute (`shape[0]` of an empty shape).
#[test]
fn zero_dimension_q_tensor_is_an_error_naming_the_file() {
    let mut w = Writer::new();
    w.kv_str("general.architecture", "llama");
    w.tensor("blk.0.attn_q.weight", &[], 0, &1f32.to_le_bytes());
    w.tensor("blk.0.attn_k.weight", &[4, 3, 2], 0, &[0; 96]);
    let file = Gguf::from_bytes("zero-dims.gguf", w.bytes()).unwrap();
    let source = WeightSource::Gguf { file, n_head: 1, n_kv_head: 1, permuted_qk: true };
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"] {
        let err = source.get(name).unwrap_err().to_string();
        assert!(err.contains("zero-dims.gguf") && err.contains("is a matrix"), "{err}");
    }
}

fn write_dir(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The files of a fixture folder (names and bytes).
fn folder(name: &str, files: &[&'static str]) -> Vec<(&'static str, Vec<u8>)> {
    files.iter().map(|f| (*f, read(&fixture(name).join(f)))).collect()
}

/// A JSON file edited node by node, or its text edited byte by byte (or both); `dict` gives the tokens
/// the text edits insert.
fn mutate_json(
    bytes: &[u8],
    tree: &[JsonEdit],
    text: &[crate::fuzz_support::Edit],
    dict: &[&str],
) -> Vec<u8> {
    let mut out = match serde_json::from_slice::<Value>(bytes) {
        Ok(mut v) if !tree.is_empty() => {
            apply_json(&mut v, tree);
            serde_json::to_vec(&v).unwrap()
        }
        _ => bytes.to_vec(),
    };
    apply(&mut out, text, &[], dict);
    out
}

/// A safetensors file with its JSON header edited (length prefix recomputed), then bytes edited.
fn mutate_safetensors(
    bytes: &[u8],
    tree: &[JsonEdit],
    text: &[crate::fuzz_support::Edit],
    dict: &[&str],
) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = mutate_json(&bytes[8..8 + n], tree, &[], dict);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    let fields = [crate::fuzz_support::Field { at: 0, width: 8 }];
    apply(&mut out, text, &fields, dict);
    out
}

/// What to mutate in a model folder: which file, its JSON tree, its bytes.
fn folder_case() -> impl Strategy<Value = (prop::sample::Index, Vec<JsonEdit>, Vec<crate::fuzz_support::Edit>)>
{
    (any::<prop::sample::Index>(), json_edits(4), prop::collection::vec(crate::fuzz_support::edit(), 0..3))
}

fn mutate_folder(
    files: &[(&'static str, Vec<u8>)],
    (which, tree, text): &(prop::sample::Index, Vec<JsonEdit>, Vec<crate::fuzz_support::Edit>),
) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = files.to_vec();
    let i = which.index(files.len());
    let (name, bytes) = &files[i];
    files[i].1 = if name.ends_with(".safetensors") {
        mutate_safetensors(bytes, tree, text, DICT)
    } else {
        mutate_json(bytes, tree, text, DICT)
    };
    files
}

fn decoder_folder_on_host(case: &mut Case, dir: &Path) {
    let cfg = case.step("config.json", || DecoderConfig::from_hf_file(&dir.join("config.json")));
    let Some(st) = case.step("safetensors", || SafetensorsFolder::open(dir)) else { return };
    let names: Vec<String> = match &cfg {
        Some(cfg) => hf_names(cfg),
        None => hf_names(&DecoderConfig::from_hf_file(&fixture("tiny-qwen2/config.json")).unwrap()),
    };
    let source = WeightSource::Safetensors(st);
    for name in names {
        case.step("weights", || source.get(&name));
    }
}

#[test]
fn hf_decoder_folder_on_the_host() {
    let files = folder("tiny-qwen2", &["config.json", "model.safetensors"]);
    let dir = tempfile::tempdir().unwrap();
    fuzz("hf-decoder", 500, folder_case(), |m| {
        let files = mutate_folder(&files, m);
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        decoder_folder_on_host(&mut case, dir.path());
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

#[test]
fn encoder_folder_on_the_host() {
    let files = folder("tiny-xlmr", &["config.json", "babelrl.json", "model.safetensors", "tokenizer.json"]);
    let names = safetensors_names(&files[2].1);
    let dir = tempfile::tempdir().unwrap();
    fuzz("encoder", 400, folder_case(), |m| {
        let files = mutate_folder(&files, m);
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        case.step("config.json", || EncoderConfig::from_dir(dir.path()));
        case.step("babelrl.json", || EncoderOptions::from_dir(dir.path()));
        if let Some(tok) =
            case.step("tokenizer.json", || Tokenizer::from_file(dir.path().join("tokenizer.json")))
        {
            use_tokenizer(&mut case, &tok);
        }
        if let Some(st) = case.step("safetensors", || SafetensorsFolder::open(dir.path())) {
            for name in &names {
                case.step("weights", || st.get(name));
            }
        }
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

/// The tensor names in a safetensors file's header.
fn safetensors_names(bytes: &[u8]) -> Vec<String> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn encoder_loaded_on_the_gpu() {
    let files = folder("tiny-bert", &["config.json", "babelrl.json", "model.safetensors", "tokenizer.json"]);
    let dir = tempfile::tempdir().unwrap();
    fuzz("encoder-gpu", 100, folder_case(), |m| {
        let files = mutate_folder(&files, m);
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        if let Some(enc) = case.step("Encoder::load", || babelrl::model::Encoder::load(gpu(), dir.path())) {
            case.step_any("embed", || enc.embed(&[TEXT.to_string(), "x".repeat(40)]));
        }
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

/// tokenizer.json with a tokenizer_config.json that carries a chat template (both edited).
#[test]
fn tokenizer_json_and_config() {
    let template = serde_json::from_slice::<Value>(&read(&fixture("chat-templates.json"))).unwrap()["templates"]
        ["smollm2"]["source"]
        .clone();
    let config = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "pad_token": null, "chat_template": template});
    let files = vec![
        ("tokenizer.json", read(&fixture("tiny-llama-gguf/tokenizer.json"))),
        ("tokenizer_config.json", serde_json::to_vec(&config).unwrap()),
        (
            "generation_config.json",
            br#"{"bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0}"#.to_vec(),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    fuzz("tokenizer", 500, folder_case(), |m| {
        let files = mutate_folder(&files, m);
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        if let Some(tok) =
            case.step("tokenizer.json", || Tokenizer::from_file(dir.path().join("tokenizer.json")))
        {
            use_tokenizer(&mut case, &tok);
        }
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

#[test]
fn chat_templates() {
    let fx: Value = serde_json::from_slice(&read(&fixture("chat-templates.json"))).unwrap();
    let sources: Vec<String> = fx["templates"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|t| t["source"].as_str().map(String::from))
        .collect();
    let msgs = [
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", TEXT),
        ChatMessage::new("assistant", "ok"),
        ChatMessage::new("user", "again"),
    ];
    let strategy = (any::<prop::sample::Index>(), edits(6));
    fuzz("chat-template", 2000, strategy, |(which, e)| {
        let mut src = sources[which.index(sources.len())].clone().into_bytes();
        apply(&mut src, e, &[], DICT);
        let src = String::from_utf8_lossy(&src).into_owned();
        let mut case = Case::new("");
        if let Some(t) = case.step_any("compile", || ChatTemplate::new(&src, Some("<s>"), Some("</s>"))) {
            case.step_any("render", || t.render(&msgs, true));
        }
        (case, src.len())
    });
}

#[test]
fn jsonl_data_sets() {
    let seed = concat!(
        r#"{"prompt": "2+2?", "completion": "4", "reference": "4", "language": "en", "group": 1}"#,
        "\n\n",
        r#"{"prompt": "Combien ?", "completion": "quatre", "reference": null, "language": "fr", "tags": ["a", 1]}"#,
        "\n",
        r#"{"prompt": "几个？", "completion": "四", "extra": {"nested": [1.5, true, null]}}"#,
        "\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    fuzz("jsonl", 1500, edits(6), |e| {
        let mut bytes = seed.as_bytes().to_vec();
        apply(&mut bytes, e, &[], DICT);
        std::fs::write(&path, &bytes).unwrap();
        let mut case = Case::new(path.display().to_string());
        if let Some(rows) = case.step("read_jsonl", || read_jsonl(&path)) {
            for (line, row) in rows {
                case.step("sample", || sample_from_json(&row, &format!("{}:{line}", path.display())));
            }
        }
        (case, bytes.len())
    });
}

#[test]
fn toml_run_files() {
    let seed = r#"
on_error = "skip"

[[reward]]
name = "exact-match"
path = "exact_match.wasm"
weight = 1.0
limits = { deadline_ms = 500, memory_mib = 64, fuel = 1000000 }

[[reward]]
name = "language"
path = "language_consistency.wasm"
weight = 0.2
config = { mode = "gate", threshold = 0.5, langs = ["fr", "bo"], nested = { a = [1, 2.5] } }
capabilities = { clock = true, env = ["LANG"] }
"#;
    let path = Path::new("fuzz/run.toml");
    fuzz("toml", 2000, edits(6), |e| {
        let mut bytes = seed.as_bytes().to_vec();
        apply(&mut bytes, e, &[], DICT);
        let text = String::from_utf8_lossy(&bytes);
        let mut case = Case::new("fuzz/run.toml");
        case.step("RunRewards::from_toml", || RunRewards::from_toml(&text, path));
        (case, bytes.len())
    });
}

// ---------------------------------------------------------------------------------------------------
// The whole loader, GPU upload included (fewer cases: each loads a model on the adapter).
// ---------------------------------------------------------------------------------------------------

#[test]
fn gguf_llama_loaded_on_the_gpu() {
    let seed_bytes = read(&fixture("tiny-llama-gguf/tiny-llama.gguf"));
    let fields = gguf_fields(&seed_bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.gguf");
    fuzz("gguf-llama-gpu", 200, edits(4), |e| {
        let mut bytes = seed_bytes.clone();
        apply(&mut bytes, e, &fields, DICT);
        std::fs::write(&path, &bytes).unwrap();
        let mut case = Case::new(path.display().to_string());
        case.step("load_language_model", || load_language_model(gpu(), &path));
        (case, bytes.len())
    });
}

#[test]
fn hf_folder_loaded_on_the_gpu() {
    let files = folder("tiny-qwen3", &["config.json", "model.safetensors"]);
    let dir = tempfile::tempdir().unwrap();
    fuzz("hf-decoder-gpu", 150, folder_case(), |m| {
        let files = mutate_folder(&files, m);
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        case.step("load_language_model", || load_language_model(gpu(), dir.path()));
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

// ---------------------------------------------------------------------------------------------------
// Regression tests for what the fuzzing (or reading the loaders for it) found; each failed before its fix.
// ---------------------------------------------------------------------------------------------------

/// A config.json whose head count × head size overflows: the loader multiplied them before reading any
/// weight (a panic in debug builds, a wrapped size in release).
#[test]
fn config_sizes_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut v: Value = serde_json::from_slice(&read(&fixture("tiny-qwen2/config.json"))).unwrap();
    v["num_attention_heads"] = (1u64 << 40).into();
    v["num_key_value_heads"] = (1u64 << 40).into();
    v["head_dim"] = (1u64 << 40).into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = DecoderConfig::from_hf_file(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("num_attention_heads"), "{err}");
}

/// A GGUF claiming 257,439 layers: the loader reserved a table of that many layers (100 MB) before
/// finding the second layer missing.
#[test]
fn absurd_layer_count_is_refused_before_allocating() {
    let mut bytes = read(&fixture("tiny-llama-gguf/tiny-llama.gguf"));
    let at = bytes.windows(17).position(|w| w == b"llama.block_count").unwrap() + 17 + 4;
    bytes[at..at + 4].copy_from_slice(&257_439u32.to_le_bytes());
    let g = Gguf::from_bytes("layers.gguf", bytes).unwrap();
    let err = DecoderConfig::from_gguf(&g).unwrap_err().to_string();
    assert!(err.contains("layers.gguf") && err.contains("257439"), "{err}");
}

/// An encoder config.json with 2^32 layers: the loader reserved a 2.7 TB layer table (the process
/// aborted); found by `BABELRL_FUZZ_SCALE=30 BABELRL_FUZZ_SEED=991`.
#[test]
fn encoder_absurd_layer_count_is_refused() {
    let mut v: Value = serde_json::from_slice(&read(&fixture("tiny-bert/config.json"))).unwrap();
    v["num_hidden_layers"] = (1u64 << 32).into();
    let err =
        EncoderConfig::from_json(&v.to_string(), Path::new("bert/config.json")).unwrap_err().to_string();
    assert!(err.contains("bert/config.json") && err.contains("num_hidden_layers"), "{err}");
}

/// An XLM-R config.json with `pad_token_id` = u64::MAX: the position offset `pad + 1` overflowed.
#[test]
fn encoder_pad_token_id_overflow_is_an_error() {
    let mut v: Value = serde_json::from_slice(&read(&fixture("tiny-xlmr/config.json"))).unwrap();
    v["pad_token_id"] = u64::MAX.into();
    let err =
        EncoderConfig::from_json(&v.to_string(), Path::new("xlmr/config.json")).unwrap_err().to_string();
    assert!(err.contains("xlmr/config.json") && err.contains("max_position_embeddings"), "{err}");
}

/// tokenizer.json files that deserialize but make `tokenizers` panic: a post-processor template naming
/// a special token it does not define (panicked in every encode), and a malformed decoder (panicked
/// while reading the file). Both are errors naming the file now.
#[test]
fn tokenizer_json_that_makes_tokenizers_panic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let mut v: Value = serde_json::from_slice(&read(&fixture("tiny-xlmr/tokenizer.json"))).unwrap();
    v["post_processor"]["single"][2]["SpecialToken"]["id"] = "".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("inconsistent"), "{err}");

    // A syntax error inside the `decoder` object: `tokenizers` expects its own helper to parse.
    let text = String::from_utf8(read(&fixture("tiny-llama-gguf/tokenizer.json"))).unwrap();
    let (head, tail) = text.split_once("\"decoder\":").unwrap();
    std::fs::write(&path, format!("{head}\"decoder\": {{\"x\" 1,{}", &tail.trim_start()[1..])).unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("panicked"), "{err}");
}
