//! Native tests of the LRPO router against DESIGN.md's formulas, with hand-computed numbers.

use super::*;

fn router(seed: u64) -> Lrpo {
    let langs = ["en", "zh", "bo"].map(String::from).to_vec();
    Lrpo::new(Config { seed, bias: BTreeMap::new() }, langs).unwrap()
}

fn request(topic: &str, k: u32, step: u64) -> ChooseRequest {
    let topic = Some(topic.to_string());
    ChooseRequest { question_id: "q1".into(), topic, question_language: "fr".into(), k, step }
}

fn fb(topic: &str, language: &str, reward: f32) -> Feedback {
    Feedback { topic: topic.into(), language: language.into(), reward }
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert!(a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < tol), "{a:?} vs {b:?}");
}

#[test]
fn temperature_and_epsilon_schedules() {
    assert_eq!(temperature(0), 1.0);
    assert!((temperature(1) - 0.999).abs() < 1e-12);
    assert!((temperature(1000) - 0.367_695_424_770_963_7).abs() < 1e-12); // 0.999^1000
    // 0.999^t reaches 0.3 at t = ln 0.3 / ln 0.999 = 1203.37.
    assert!(temperature(1203) > 0.3);
    assert_eq!(temperature(1204), 0.3);
    assert_eq!(temperature(100_000), 0.3);
    assert_eq!(epsilon(0), 0.2);
    assert!((epsilon(100) - 0.121_154_087_298_145_6).abs() < 1e-12); // 0.2 · 0.995^100
    assert!(epsilon(2000) > 0.0 && epsilon(2000) < 1e-5);
}

#[test]
fn first_two_rollouts_stay_in_the_question_language() {
    let mut r = router(1);
    for step in [0, 10, 5000] {
        let out = r.choose(&request("math", 6, step)).unwrap();
        assert_eq!(out.len(), 6);
        assert_eq!(&out[..2], ["fr", "fr"]);
        assert!(out[2..].iter().all(|l| ["en", "zh", "bo"].contains(&l.as_str())), "{out:?}");
    }
    assert_eq!(r.choose(&request("math", 1, 0)).unwrap(), ["fr"]);
    assert!(r.choose(&request("math", 0, 0)).unwrap().is_empty());
}

#[test]
fn z_scored_ema_update_every_five_steps() {
    let mut r = router(0);
    // math: en earns 1, 1, 0, 1, 0.75 (mean 0.75), zh 0.5, bo 0.25 → population std sqrt(1/24),
    // z = ±0.25/sqrt(1/24) = ±1.2247449 → Q = 0.1·z. poetry: en 0.25, zh 0.5 (bo unseen) → z = ∓1.
    // (Rewards are exact in f32 so the f64 arithmetic can be checked to 1e-12.)
    let en = [1.0, 1.0, 0.0, 1.0, 0.75];
    for step in 0..5u64 {
        let mut f = vec![fb("math", "en", en[step as usize]), fb("math", "zh", 0.5), fb("math", "bo", 0.25)];
        f.extend([fb("poetry", "en", 0.25), fb("poetry", "zh", 0.5), fb("poetry", "fr", 9.0)]);
        r.update(step, &f).unwrap();
        if step < 4 {
            assert!(r.state.q.is_empty(), "no Q update before the fifth step");
        }
    }
    let z = 0.25 / (1.0f64 / 24.0).sqrt();
    close(&r.state.q["math"], &[0.1 * z, 0.0, -0.1 * z], 1e-12);
    close(&r.state.q["poetry"], &[-0.1, 0.1, 0.0], 1e-12);
    assert!(r.state.acc.is_empty());
    // Second window (two update calls in one step count once): en 0, zh 1, bo 0.5 → z = (−1.2247, 1.2247, 0);
    // Q = 0.9·Q + 0.1·z = (−0.0122474, 0.1224745, −0.1102270).
    for step in 5..10u64 {
        r.update(step, &[fb("math", "en", 0.0), fb("math", "zh", 1.0)]).unwrap();
        r.update(step, &[fb("math", "bo", 0.5)]).unwrap();
    }
    close(&r.state.q["math"], &[-0.012_247_448_7, 0.122_474_487_1, -0.110_227_038_4], 1e-9);
    close(&r.state.q["poetry"], &[-0.1, 0.1, 0.0], 1e-12);
    assert!(r.update(10, &[fb("math", "en", f32::NAN)]).is_err());
}

#[test]
fn sampling_follows_epsilon_softmax() {
    let mut r = router(42);
    r.state.q.insert("t".into(), vec![0.5, 0.0, -0.5]);
    // step 2000: T = 0.3, ε = 8.86e-6: softmax((0.5, 0, −0.5) / 0.3) = (0.81662, 0.15424, 0.02914).
    let want = [0.816_622_505_6, 0.154_242_462_2, 0.029_135_032_2];
    close(&r.probabilities("t", 2000), &want, 1e-9);
    // Unknown topic: Q = 0 → uniform.
    close(&r.probabilities("new", 0), &[1.0 / 3.0; 3], 1e-12);
    // At step 0 (T = 1, ε = 0.2) the mixture is 0.2/3 + 0.8·softmax(Q).
    let e = [0.5f64.exp(), 1.0, (-0.5f64).exp()];
    let s: f64 = e.iter().sum();
    let mix: Vec<f64> = e.iter().map(|x| 0.2 / 3.0 + 0.8 * x / s).collect();
    close(&r.probabilities("t", 0), &mix, 1e-12);
    let n = 30_000;
    let mut counts = [0usize; 3];
    for _ in 0..n / 10 {
        for l in &r.choose(&request("t", 12, 2000)).unwrap()[2..] {
            counts[["en", "zh", "bo"].iter().position(|x| x == l).unwrap()] += 1;
        }
    }
    let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    close(&freq, &want, 0.01);
}

#[test]
fn state_round_trip_seeding_and_garbage() {
    let mut a = router(7);
    a.update(0, &[fb("math", "en", 1.0)]).unwrap();
    a.state.q.insert("math".into(), vec![0.3, -0.1, 0.2]);
    let saved = a.save_state();
    let next: Vec<_> = (0..5).map(|s| a.choose(&request("math", 8, s)).unwrap()).collect();
    let mut b = router(999);
    b.load_state(&saved).unwrap();
    let again: Vec<_> = (0..5).map(|s| b.choose(&request("math", 8, s)).unwrap()).collect();
    assert_eq!(next, again, "restored state reproduces the same choices");
    assert_ne!(
        router(1).choose(&request("x", 40, 0)).unwrap(),
        router(2).choose(&request("x", 40, 0)).unwrap()
    );
    let text = String::from_utf8(saved.clone()).unwrap();
    assert!(text.contains("\"version\":1"), "{text}");
    assert!(b.load_state(b"").is_err());
    assert!(b.load_state(b"{\"plugin\":\"lrpo-softmax\",\"version\":1,\"state\":{}}").is_err());
    assert!(
        b.load_state(&text.replace("\"version\":1", "\"version\":2").into_bytes())
            .unwrap_err()
            .contains("version 2")
    );
    let mut other = Lrpo::new(Config { seed: 0, bias: BTreeMap::new() }, vec!["en".into()]).unwrap();
    assert!(other.load_state(&saved).unwrap_err().contains("languages"));
    let short = text.replace("[0.3,-0.1,0.2]", "[0.3]");
    assert!(b.load_state(short.as_bytes()).unwrap_err().contains("wrong length"));
    assert_eq!(b.state, a.state, "failed loads leave the state alone");
}

#[test]
fn bias_config() {
    let bias = BTreeMap::from([("bo".to_string(), 1.0)]);
    let r = Lrpo::new(Config { seed: 0, bias }, ["en", "bo"].map(String::from).to_vec()).unwrap();
    let e = 1.0f64.exp();
    close(
        &r.probabilities("t", 100_000),
        &[1.0 / (1.0 + e.powf(1.0 / 0.3)), 1.0 - 1.0 / (1.0 + e.powf(1.0 / 0.3))],
        1e-6,
    );
    let bad = BTreeMap::from([("xx".to_string(), 1.0)]);
    assert!(Lrpo::new(Config { seed: 0, bias: bad }, vec!["en".into()]).is_err());
}

/// Checkpoints corrupted node by node are refused, or leave a router that still works.
#[test]
fn corrupt_states_are_refused_or_harmless() {
    let mut r = router(3);
    let langs = ["en", "zh", "bo"].map(String::from).to_vec();
    for step in 0..5 {
        r.choose(&request("math", 4, step)).unwrap();
        r.update(step, &[fb("math", "zh", 1.0), fb("math", "bo", 0.0), fb("_", "en", 0.5)]).unwrap();
    }
    let (refused, accepted) =
        babelrl_sdk::state_check::check_corrupt_states(|| router(3), &langs, &r.save_state());
    eprintln!("lrpo-softmax: {refused} corrupt states refused, {accepted} accepted");
    assert!(refused > accepted);
}
