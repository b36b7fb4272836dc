//! The eval scores on hand-made completions: exact-match and language-consistency decisions at their
//! edges, metric lists, the column checks' errors, and `score`'s aggregation.

use super::*;

fn row(line: usize, reference: Option<&str>, language: Option<&str>) -> GrpoPrompt {
    GrpoPrompt {
        tokens: vec![1],
        text: "q".into(),
        reference: reference.map(String::from),
        language: language.map(String::from),
        fields: Vec::new(),
        messages: None,
        line,
    }
}

#[test]
fn exact_match_compares_the_last_numbers() {
    let cases = [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "18", true),
        ("So she pays 1,250 dollars.", "1250", true),
        ("答案是１２５０。", "1250", true),
        ("18 first, then the answer is 20", "18", false),
        ("The answer is -3.5", "-3.5", true),
        ("The answer is 3.5", "-3.5", false),
        ("I don't know.", "18", false),
        ("18", "The answer is 18", true),
    ];
    for (completion, reference, want) in cases {
        assert_eq!(exact_match(completion, reference).unwrap(), want, "{completion:?} vs {reference:?}");
    }
    let err = exact_match("18", "eighteen").unwrap_err().to_string();
    assert!(err.contains("\"eighteen\" has no number"), "{err}");
}

#[test]
fn language_consistency_needs_eighty_percent_of_the_letters() {
    // 4 Latin letters of 5 is exactly the threshold; 3 of 4 is below it. Digits and punctuation do not count.
    assert!(language_consistent("abcd你", "en").unwrap());
    assert!(!language_consistent("abc你", "en").unwrap());
    assert!(language_consistent("Hello, world! 42", "eng_Latn").unwrap());
    // 8 Han letters of 10: at the threshold.
    assert!(language_consistent("你好世界，我们来了。ab", "zho_Hans").unwrap());
    assert!(!language_consistent("你好世界，我们来了。abc", "zho_Hans").unwrap());
    assert!(!language_consistent("你好 hello", "zho_Hans").unwrap());
    assert!(language_consistent("བཀྲ་ཤིས་བདེ་ལེགས།", "bod_Tibt").unwrap());
    assert!(!language_consistent("Tashi delek", "bod_Tibt").unwrap());
    assert!(!language_consistent("42.", "en").unwrap(), "no letters: not consistent");
    assert!(!language_consistent("", "en").unwrap());
    let err = language_consistent("hi", "klingon").unwrap_err().to_string();
    assert!(err.contains("`klingon`"), "{err}");
}

#[test]
fn metric_lists() {
    assert_eq!(Metric::parse_list("exact,chrf").unwrap(), [Metric::Chrf, Metric::Exact]);
    assert_eq!(Metric::parse_list(" BLEU , bleu,").unwrap(), [Metric::Bleu]);
    assert_eq!(Metric::parse_list("chrf,bleu,semantic,language,exact").unwrap(), Metric::ALL);
    let err = Metric::parse_list("chrf,rouge").unwrap_err().to_string();
    assert!(
        err.contains("unknown metric `rouge`") && err.contains("chrf, bleu, semantic, language, exact"),
        "{err}"
    );
    assert!(Metric::parse_list(" , ").unwrap_err().to_string().contains("no metric chosen"));
}

#[test]
fn check_rows_names_the_file_line_and_metric() {
    let path = Path::new("data/test.jsonl");
    let rows = [row(1, Some("18"), Some("en")), row(3, None, Some("en"))];
    let err = check_rows(path, &rows, &[Metric::Chrf]).unwrap_err().to_string();
    assert!(
        err.starts_with("data/test.jsonl: line 3: no `reference` column") && err.contains("`chrf`"),
        "{err}"
    );
    // The language metric does not need references.
    check_rows(path, &rows, &[Metric::Language]).unwrap();
    let rows = [row(1, Some("18"), Some("en")), row(2, Some("18"), None)];
    let err = check_rows(path, &rows, &[Metric::Language]).unwrap_err().to_string();
    assert!(err.contains("line 2: no `language` column") && err.contains("`language` metric"), "{err}");
    let rows = [row(5, Some("x"), Some("xx"))];
    let err = check_rows(path, &rows, &[Metric::Language]).unwrap_err().to_string();
    assert!(err.contains("line 5: unknown language code `xx`"), "{err}");
    let err = check_rows(path, &rows, &[Metric::Exact]).unwrap_err().to_string();
    assert!(err.contains("line 5: the reference \"x\" has no number"), "{err}");
    check_rows(path, &rows, &[Metric::Chrf, Metric::Bleu, Metric::Semantic]).unwrap();
}

/// Unit vectors: "a" and "a2" are the same direction, "b" at cosine 0.6 from "a", anything else at 0.
fn fake_embed(texts: &[String]) -> Result<Vec<Vec<f32>>> {
    Ok(texts
        .iter()
        .map(|t| match t.as_str() {
            "a" | "a2" => vec![1.0, 0.0, 0.0],
            "b" => vec![0.6, 0.8, 0.0],
            _ => vec![0.0, 0.0, 1.0],
        })
        .collect())
}

#[test]
fn score_aggregates_rows_and_corpus_metrics() {
    let rows = [
        row(1, Some("a"), Some("en")),
        row(2, Some("a2"), Some("zh")),
        row(3, Some("The answer is 7"), Some("en")),
        row(4, Some("b"), Some("en")),
    ];
    let completions = ["a", "b", "7", "x 7"];
    let text_metrics = [Metric::Chrf, Metric::Bleu, Metric::Semantic, Metric::Language];
    let s = score(&rows, &completions, &text_metrics, &BleuConfig::default(), fake_embed).unwrap();
    let refs = ["a", "a2", "The answer is 7", "b"];
    assert_eq!(s.chrf, Some(corpus_chrf(&completions, &refs, &ChrfConfig::default()).unwrap().score));
    assert_eq!(s.chrf_pp, Some(corpus_chrf(&completions, &refs, &ChrfConfig::chrf_pp()).unwrap().score));
    assert_eq!(s.bleu, Some(corpus_bleu(&completions, &refs, &BleuConfig::default()).unwrap().score));
    let sem: Vec<f32> = s.rows.iter().map(|r| r.semantic.unwrap()).collect();
    // Rows 3 ("7" vs "The answer is 7") both embed to [0, 0, 1].
    assert_eq!(sem, [1.0, 0.6, 1.0, 0.0]);
    assert_eq!(s.semantic, Some((1.0 + f64::from(0.6f32) + 1.0) / 4.0));
    // "a" en ✓, "b" as zh ✗, "7" has no letters ✗, "x 7" en ✓.
    let lang: Vec<bool> = s.rows.iter().map(|r| r.language_consistent.unwrap()).collect();
    assert_eq!(lang, [true, false, false, true]);
    assert_eq!(s.language, Some(0.5));
    assert_eq!(s.exact, None);
    // Row 1's reference has no number: exact errors there.
    let err = score(&rows, &completions, &[Metric::Exact], &BleuConfig::default(), fake_embed).unwrap_err();
    assert!(err.to_string().contains("\"a\" has no number"), "{err}");
    let math = [row(3, Some("The answer is 7"), None), row(4, Some("12"), None)];
    let s = score(&math, &["7", "x 7"], &[Metric::Exact], &BleuConfig::default(), |_| {
        panic!("embed is only called for `semantic`")
    })
    .unwrap();
    assert_eq!(s.exact, Some(0.5));
    assert_eq!(s.rows.iter().map(|r| r.exact).collect::<Vec<_>>(), [Some(true), Some(false)]);
    assert_eq!((s.chrf, s.bleu, s.semantic, s.language), (None, None, None, None));
    let err = score(&rows, &completions[1..], &Metric::ALL, &BleuConfig::default(), fake_embed).unwrap_err();
    assert!(err.to_string().contains("3 completions for 4 rows"), "{err}");
}
