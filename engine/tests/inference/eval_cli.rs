//! `babelrl eval` on the tiny Llama (base and its PEFT fixture adapter) with the tiny BERT as encoder: the
//! scores it reports equal the library's on the completions it wrote to `--json`, and bad inputs
//! (a row without `reference`, an unknown metric, a missing adapter folder) are clear errors.

use std::path::{Path, PathBuf};

use babelrl::eval::report::{exact_match, language_consistent};
use babelrl::eval::{BleuConfig, ChrfConfig, corpus_bleu, corpus_chrf};
use babelrl::model::Encoder;

use crate::common::{self, Scratch, repo_root, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};

fn temp(name: &str) -> Scratch {
    scratch(&format!("eval-{name}"))
}

fn fixture(name: &str) -> String {
    repo_root().join("tests/fixtures").join(name).to_str().unwrap().to_string()
}

/// Rows with a reference holding a number and a language; `skip_reference` leaves it off that line.
fn write_data(dir: &Path, skip_reference: Option<usize>) -> PathBuf {
    let rows = [
        ("sky is", "the sky is blue 3"),
        ("grass is", "green grass 12"),
        ("snow is", "white snow, 7"),
        ("coal is", "black coal 40"),
        ("the sea", "the sea is deep 2"),
    ];
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (p, r))| {
            let mut row = serde_json::json!({"prompt": p, "reference": r, "language": "en", "id": i});
            if skip_reference == Some(i + 1) {
                row.as_object_mut().unwrap().remove("reference");
            }
            row.to_string()
        })
        .collect();
    let path = dir.join("heldout.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn f64_of(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn eval_scores_equal_the_library_on_the_completions_it_wrote() {
    let dir = temp("scores");
    let data = write_data(&dir, None);
    let json = dir.join("eval.json");
    let adapter = format!("lora={}", fixture("tiny-llama/lora"));
    let stdout = ok(&babelrl(
        &[
            "eval",
            data.to_str().unwrap(),
            "--model",
            tiny_model().to_str().unwrap(),
            "--adapter",
            &adapter,
            "--encoder",
            &fixture("tiny-bert"),
            "--metrics",
            "chrf,bleu,semantic,language,exact",
            "--max-new-tokens",
            "12",
            "--batch-size",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    ));
    let table: Vec<&str> = stdout.lines().collect();
    assert_eq!(table.len(), 3, "{stdout}");
    assert!(
        table[0].starts_with("model") && table[0].contains("chrF2++") && table[0].contains("exact %"),
        "{stdout}"
    );
    assert!(table[1].starts_with("base ") && table[2].starts_with("lora "), "{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["rows"], 5);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let encoder = Encoder::load(common::gpu(), Path::new(&fixture("tiny-bert"))).unwrap();
    let mut completions_of = Vec::new();
    for model in models {
        let rows = model["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        let hyps: Vec<&str> = rows.iter().map(|r| r["completion"].as_str().unwrap()).collect();
        let refs: Vec<&str> = rows.iter().map(|r| r["reference"].as_str().unwrap()).collect();
        assert_eq!(rows.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(rows.iter().all(|r| (1..=12).contains(&r["tokens"].as_u64().unwrap())));
        let s = &model["scores"];
        let label = model["label"].as_str().unwrap();
        // Corpus metrics: the same bits as the library on the same text.
        assert_eq!(
            f64_of(&s["chrf"]),
            corpus_chrf(&hyps, &refs, &ChrfConfig::default()).unwrap().score,
            "{label}"
        );
        assert_eq!(
            f64_of(&s["chrf++"]),
            corpus_chrf(&hyps, &refs, &ChrfConfig::chrf_pp()).unwrap().score,
            "{label}"
        );
        assert_eq!(
            f64_of(&s["bleu"]),
            corpus_bleu(&hyps, &refs, &BleuConfig::default()).unwrap().score,
            "{label}"
        );
        // Semantic: the encoder's embeddings of completions then references (the order eval sends them in).
        let texts: Vec<String> = hyps.iter().chain(&refs).map(|t| t.to_string()).collect();
        let vecs = encoder.embed(&texts).unwrap();
        let mut sum = 0.0f64;
        for (i, row) in rows.iter().enumerate() {
            let cos = babelrl_sdk::similarity::cosine(&vecs[i], &vecs[5 + i]).unwrap();
            assert_eq!(row["semantic"].as_f64().unwrap() as f32, cos, "{label} row {i}");
            sum += f64::from(cos);
        }
        assert_eq!(f64_of(&s["semantic"]), sum / 5.0, "{label}");
        // Rates: the share of rows the scoring functions accept, and each row's decision.
        let lang: Vec<bool> = hyps.iter().map(|h| language_consistent(h, "en").unwrap()).collect();
        let exact: Vec<bool> = hyps.iter().zip(&refs).map(|(h, r)| exact_match(h, r).unwrap()).collect();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row["language_consistent"], lang[i], "{label} row {i}");
            assert_eq!(row["exact"], exact[i], "{label} row {i}");
        }
        let rate = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / 5.0;
        assert_eq!(f64_of(&s["language"]), rate(&lang), "{label}");
        assert_eq!(f64_of(&s["exact"]), rate(&exact), "{label}");
        completions_of.push(hyps.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    }
    assert_ne!(completions_of[0], completions_of[1], "the adapter changes the greedy completions");

    // --limit and a single metric: only that number, for the first rows.
    let stdout = ok(&babelrl(
        &[
            "eval",
            data.to_str().unwrap(),
            "--model",
            tiny_model().to_str().unwrap(),
            "--metrics",
            "exact",
            "--limit",
            "2",
            "--max-new-tokens",
            "12",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(stdout.lines().next().unwrap().ends_with("exact %") && !stdout.contains("chrF"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["rows"], 2);
    assert_eq!(report["models"][0]["scores"]["chrf"], serde_json::Value::Null);
    let base_rows = report["models"][0]["rows"].as_array().unwrap();
    assert_eq!(
        base_rows.iter().map(|r| r["completion"].as_str().unwrap()).collect::<Vec<_>>(),
        completions_of[0][..2],
        "batching does not change greedy completions"
    );
}

#[test]
fn eval_bad_inputs_are_clear_errors() {
    let dir = temp("bad");
    let model = tiny_model();
    let run = |data: &Path, extra: &[&str]| {
        let mut args =
            vec!["eval", data.to_str().unwrap(), "--model", model.to_str().unwrap(), "--max-new-tokens", "4"];
        args.extend_from_slice(extra);
        babelrl(&args, &[])
    };
    let data = write_data(&dir, Some(3));
    let e = err(&run(&data, &["--metrics", "chrf"]));
    assert!(
        e.contains(&format!("{}: line 3: no `reference` column", data.display()))
            && e.contains("`chrf` metric"),
        "{e}"
    );
    // language does not read references: that row is fine for it.
    ok(&run(&data, &["--metrics", "language"]));
    let e = err(&run(&data, &["--metrics", "chrf,rouge"]));
    assert!(
        e.contains("unknown metric `rouge`") && e.contains("chrf, bleu, semantic, language, exact"),
        "{e}"
    );
    let missing = dir.join("no-such-adapter");
    let spec = format!("sft={}", missing.display());
    let e = err(&run(&data, &["--metrics", "language", "--adapter", &spec]));
    assert!(e.contains(&format!("--adapter sft: {} is not a folder", missing.display())), "{e}");
    let e = err(&run(&dir.join("absent.jsonl"), &["--metrics", "language"]));
    assert!(e.contains("absent.jsonl"), "{e}");
    let e = err(&run(&data, &["--metrics", "exact", "--limit", "0"]));
    assert!(e.contains("--limit must be at least 1"), "{e}");
}
