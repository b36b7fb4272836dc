//! Stop conditions and streaming on the real SmolLM2-135M-Instruct GGUF, checked against the same
//! model's own unconstrained greedy run: a stop string cuts the text before its first occurrence, a
//! stop token ends the completion right after it, and the streamed pieces always add up to the final
//! text without ever showing any part of the stop string.

use crate::common;

use babelrl::generate::{Completion, FinishReason, SamplingConfig, generate};
use babelrl::model::{LanguageModel, load_language_model};
use common::{gpu, model_dir};

const PROMPT: &str = "The three largest cities of France are";

fn smollm2() -> Option<LanguageModel> {
    let dir = model_dir("smollm2-135m-instruct")?;
    Some(load_language_model(gpu(), &dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap())
}

/// Greedy completion of PROMPT under `cfg`, and the concatenated streamed pieces.
fn run(lm: &LanguageModel, cfg: &SamplingConfig) -> (Completion, String) {
    let tokenizer = lm.tokenizer().unwrap();
    let prompt = tokenizer.encode(PROMPT, true).unwrap();
    let mut streamed = String::new();
    let mut out = generate(&lm.decoder, tokenizer, &[prompt], cfg, |c| streamed.push_str(c.text)).unwrap();
    (out.remove(0), streamed)
}

#[test]
fn stop_strings_and_tokens_cut_where_the_free_run_says() {
    let Some(lm) = smollm2() else { return };
    let free_cfg = SamplingConfig { max_new_tokens: 24, ..SamplingConfig::default() };
    let (free, streamed) = run(&lm, &free_cfg);
    assert_eq!(streamed, free.text, "streamed pieces add up to the text");
    let chars: Vec<(usize, char)> = free.text.char_indices().collect();
    assert!(chars.len() >= 12, "the free run is long enough to cut: {:?}", free.text);

    // A stop string taken from the middle of the free text, straddling a token boundary (so that its
    // beginning arrives one token before its end): the text ends just before its first occurrence,
    // and no streamed piece ever showed any of it.
    let tokenizer = lm.tokenizer().unwrap();
    let boundary = (free.tokens.len() / 2..free.tokens.len())
        .map(|j| tokenizer.decode(&free.tokens[..j], true).unwrap().len())
        .find(|&end| {
            let at = chars.iter().position(|&(i, _)| i == end);
            at.is_some_and(|c| c >= 2 && c + 2 < chars.len())
        })
        .expect("a token boundary with two characters on each side");
    let c = chars.iter().position(|&(i, _)| i == boundary).unwrap();
    let stop = free.text[chars[c - 2].0..chars[c + 2].0].to_string();
    let cut = free.text.find(&stop).unwrap();
    let cfg = SamplingConfig { stop_strings: vec![stop.clone()], ..free_cfg.clone() };
    let (got, streamed) = run(&lm, &cfg);
    assert_eq!(got.finish, FinishReason::StopString, "stop string {stop:?}");
    assert_eq!(got.text, free.text[..cut], "text cut before {stop:?}");
    assert_eq!(streamed, got.text, "streamed pieces add up to the cut text");
    assert_eq!(got.tokens[..], free.tokens[..got.tokens.len()], "greedy tokens are a prefix of the free run");

    // A stop token: the completion ends with its first occurrence, which stays in the tokens (the
    // policy learns to stop) and out of the text.
    let k = free.tokens.len() / 2;
    let stop_token = free.tokens[k];
    let first = free.tokens.iter().position(|&t| t == stop_token).unwrap();
    let cfg = SamplingConfig { stop_tokens: vec![stop_token], ..free_cfg.clone() };
    let (got, streamed) = run(&lm, &cfg);
    assert_eq!(got.finish, FinishReason::StopToken);
    assert_eq!(got.tokens[..], free.tokens[..=first]);
    assert_eq!(got.logprobs.len(), got.tokens.len());
    assert_eq!(got.text, tokenizer.decode(&free.tokens[..first], true).unwrap());
    assert_eq!(streamed, got.text);

    // max_new_tokens ends the run with Length.
    let cfg = SamplingConfig { max_new_tokens: 5, ..free_cfg };
    let (got, streamed) = run(&lm, &cfg);
    assert_eq!((got.finish, got.tokens.len()), (FinishReason::Length, 5));
    assert_eq!(got.tokens[..], free.tokens[..5]);
    assert_eq!(streamed, got.text);
}

/// A repeated prompt (a GRPO group) is prefilled once and its keys and values copied to the other
/// slots: every sequence's greedy completion equals its prompt generated alone, and sampled groups
/// stay seeded (the same seed gives the same completions; the group's members differ from each other).
#[test]
fn repeated_prompts_share_their_prefill_and_generate_as_alone() {
    let Some(lm) = smollm2() else { return };
    let tokenizer = lm.tokenizer().unwrap();
    let a = tokenizer.encode(PROMPT, true).unwrap();
    let b = tokenizer.encode("Water boils at", true).unwrap();
    let greedy = SamplingConfig { max_new_tokens: 8, ..SamplingConfig::default() };
    let alone =
        |p: &Vec<u32>| generate(&lm.decoder, tokenizer, std::slice::from_ref(p), &greedy, |_| {}).unwrap();
    let (ga, gb) = (alone(&a).remove(0).tokens, alone(&b).remove(0).tokens);
    let mixed = [a.clone(), a.clone(), b.clone(), a.clone(), b.clone()];
    let got = generate(&lm.decoder, tokenizer, &mixed, &greedy, |_| {}).unwrap();
    for (i, c) in got.iter().enumerate() {
        let want = if mixed[i] == a { &ga } else { &gb };
        assert_eq!(&c.tokens, want, "sequence {i} of the mixed batch");
    }
    let sampled = SamplingConfig { temperature: 1.0, seed: 9, ..greedy };
    let group = vec![a.clone(); 6];
    let first = generate(&lm.decoder, tokenizer, &group, &sampled, |_| {}).unwrap();
    let again = generate(&lm.decoder, tokenizer, &group, &sampled, |_| {}).unwrap();
    let tokens = |cs: &[Completion]| cs.iter().map(|c| c.tokens.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&first), tokens(&again), "the same seed gives the same group");
    let distinct: std::collections::HashSet<_> = tokens(&first).into_iter().collect();
    assert!(distinct.len() > 1, "a sampled group of six is not all one completion");
}
