//! A router plugin for the hostile-plugin suite: a tiny count-based router whose `load-state` refuses
//! garbage (and traps on state starting with 0xFF), and whose `choose` misbehaves on request
//! (question id `!loop`, `!stranger`, `!count`, `!panic`, `!say:<language>`; state `SAY:<error>` is
//! refused with that error). Config `{"configure": "trap"}` traps.

use std::cell::RefCell;
use std::hint::black_box;

wit_bindgen::generate!({ path: "../../../sdk/wit", world: "router" });

struct Router;

#[derive(Default)]
struct State {
    languages: Vec<String>,
    /// Sum of rewards per language, in `languages` order.
    totals: Vec<f32>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

const MAGIC: &[u8] = b"HRS1";

impl Guest for Router {
    fn configure(config_json: String, languages: Vec<String>) -> Result<(), String> {
        if config_json.contains("\"configure\":\"trap\"") {
            panic!("router configure was told to trap");
        }
        if languages.is_empty() {
            return Err("no languages".into());
        }
        STATE.with(|s| *s.borrow_mut() = State { totals: vec![0.0; languages.len()], languages });
        Ok(())
    }

    /// The question's language first, then the others by descending total reward (ties by name).
    fn choose(request: ChooseRequest) -> Result<Vec<String>, String> {
        match request.question_id.as_str() {
            "!loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "!panic" => panic!("router panic in choose"),
            "!stranger" => return Ok(vec!["xx_Nope".to_string(); request.k as usize]),
            "!count" => return Ok(vec![request.question_language.clone(); request.k as usize + 1]),
            id if id.starts_with("!say:") => {
                return Ok(vec![id["!say:".len()..].to_string(); request.k as usize]);
            }
            _ => {}
        }
        STATE.with(|s| {
            let s = s.borrow();
            let mut order: Vec<usize> = (0..s.languages.len()).collect();
            order.sort_by(|&a, &b| {
                s.totals[b].total_cmp(&s.totals[a]).then(s.languages[a].cmp(&s.languages[b]))
            });
            let mut out = vec![request.question_language.clone()];
            let mut i = 0;
            while out.len() < request.k as usize {
                out.push(s.languages[order[i % order.len()]].clone());
                i += 1;
            }
            out.truncate(request.k as usize);
            Ok(out)
        })
    }

    fn update(_step: u64, feedback: Vec<Feedback>) -> Result<(), String> {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            for f in feedback {
                let Some(i) = s.languages.iter().position(|l| *l == f.language) else {
                    return Err(format!("unknown language {}", f.language));
                };
                s.totals[i] += f.reward;
            }
            Ok(())
        })
    }

    fn save_state() -> Vec<u8> {
        STATE.with(|s| {
            let s = s.borrow();
            let mut out = MAGIC.to_vec();
            for (l, t) in s.languages.iter().zip(&s.totals) {
                out.extend_from_slice(format!("{l}={t}\n").as_bytes());
            }
            out
        })
    }

    fn load_state(state: Vec<u8>) -> Result<(), String> {
        if state.first() == Some(&0xFF) {
            panic!("router state starts with 0xFF");
        }
        if let Some(say) = state.strip_prefix(b"SAY:") {
            return Err(String::from_utf8_lossy(say).into_owned());
        }
        let body = state.strip_prefix(MAGIC).ok_or("state does not start with HRS1")?;
        let text = std::str::from_utf8(body).map_err(|e| format!("state is not UTF-8: {e}"))?;
        let mut languages = Vec::new();
        let mut totals = Vec::new();
        for line in text.lines() {
            let (l, t) = line.split_once('=').ok_or_else(|| format!("bad line {line:?}"))?;
            languages.push(l.to_string());
            totals.push(t.parse::<f32>().map_err(|e| format!("bad total in {line:?}: {e}"))?);
        }
        STATE.with(|s| *s.borrow_mut() = State { languages, totals });
        Ok(())
    }
}

export!(Router);
