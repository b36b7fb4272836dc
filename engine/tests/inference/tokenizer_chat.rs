//! Chat templates rendered by `text::chat` against transformers' rendering of the same templates and
//! conversations (`tests/fixtures/chat-templates.json`, made by `scripts/chat_template_fixture.py`).
//! Run: `cargo test -p babelrl --test inference tokenizer_chat::`.

use babelrl::text::{ChatMessage, ChatTemplate};
use serde_json::Value;

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat-templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn renders_like_transformers() {
    let fx = fixture();
    let conversations: Vec<Vec<ChatMessage>> = serde_json::from_value(fx["conversations"].clone()).unwrap();
    let mut per_template = std::collections::BTreeMap::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let t = &fx["templates"][name];
        let tmpl = ChatTemplate::new(
            t["source"].as_str().unwrap(),
            t["bos_token"].as_str(),
            t["eos_token"].as_str(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let conv = &conversations[case["conversation"].as_u64().unwrap() as usize];
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let mut extra = serde_json::Map::new();
        if let Some(tools) = case.get("tools") {
            extra.insert("tools".into(), tools.clone());
        }
        let got = tmpl.render_with(conv, agp, &extra).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = case["rendered"].as_str().unwrap();
        assert_eq!(
            got, want,
            "template {name}, conversation {}, add_generation_prompt {agp}",
            case["conversation"]
        );
        *per_template.entry(name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(per_template.keys().collect::<Vec<_>>(), ["pycompat", "qwen2.5", "smollm2"]);
    assert!(per_template.values().all(|&n| n >= 8), "{per_template:?}");
}

#[test]
fn template_error_names_the_problem() {
    let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
    let e = t.render(&[ChatMessage::new("user", "x")], true).unwrap_err().to_string();
    assert!(e.starts_with("chat template:") && e.contains("roles must alternate"), "{e}");
}
