//! What a LoRA adapter adapts and how much: target projections, rank, alpha, rsLoRA, dropout, and
//! PEFT's `adapter_config.json` (read with every unsupported PEFT feature refused by name, and written).

use std::path::Path;

use serde_json::{Value, json};

use crate::model::DecoderConfig;
use crate::{Error, Result};

/// A projection of a decoder layer that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// All seven, in the order the decoder runs them (and the order adapters list them).
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// PEFT's module name (`q_proj`, …, `down_proj`).
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The block the projection sits in (`self_attn` or `mlp`), as in Hugging Face tensor names.
    pub fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    /// Parses `q`, `q_proj` or `self_attn.q_proj` (and likewise for the other six).
    pub fn parse(name: &str) -> Option<Target> {
        let short = name.rsplit('.').next().unwrap_or(name);
        let target = Target::ALL
            .into_iter()
            .find(|t| short == t.peft_name() || short == t.peft_name().trim_end_matches("_proj"))?;
        let prefix = name.strip_suffix(short).unwrap_or("");
        (prefix.is_empty() || prefix == format!("{}.", target.parent())).then_some(target)
    }

    /// (output features, input features) of the projection in `model`.
    pub fn shape(self, model: &DecoderConfig) -> (usize, usize) {
        let (d, inter) = (model.hidden, model.intermediate);
        let (qd, kvd) = (model.n_head * model.head_dim, model.n_kv_head * model.head_dim);
        match self {
            Target::Q => (qd, d),
            Target::K | Target::V => (kvd, d),
            Target::O => (d, qd),
            Target::Gate | Target::Up => (inter, d),
            Target::Down => (d, inter),
        }
    }

    /// Index in [`Target::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether a PEFT config value leaves plain LoRA's computation unchanged.
type Neutral = fn(&Value) -> bool;

/// Hyper-parameters of a LoRA adapter. The adapted projection computes `W x + scale · B (A x)` with
/// `scale = alpha / r`, or `alpha / √r` with rsLoRA.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank r (rows of A, columns of B).
    pub r: usize,
    /// PEFT's `lora_alpha`.
    pub alpha: f64,
    /// rsLoRA: scale by alpha / √r instead of alpha / r.
    pub use_rslora: bool,
    /// Dropout on the adapter's input during training (PEFT's `lora_dropout`); inference ignores it.
    pub dropout: f64,
    /// Adapted projections, without duplicates, in [`Target::ALL`] order.
    pub targets: Vec<Target>,
    /// PEFT's `base_model_name_or_path`, kept for the files (never used to check the model: shapes are).
    pub base_model: Option<String>,
}

impl LoraConfig {
    /// A config on `targets` with rank `r` and `alpha`, no rsLoRA, no dropout.
    pub fn new(r: usize, alpha: f64, targets: &[Target]) -> Result<LoraConfig> {
        let mut targets = targets.to_vec();
        targets.sort();
        targets.dedup();
        let cfg = LoraConfig { r, alpha, use_rslora: false, dropout: 0.0, targets, base_model: None };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values a LoRA needs: r ≥ 1, a finite alpha, dropout in [0, 1), at least one target.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("LoRA config: {m}")));
        if self.r == 0 {
            return bad("rank r must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return bad(format!("lora_alpha must be a finite number, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("lora_dropout must lie in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("no target modules (give some of q, k, v, o, gate, up, down)".into());
        }
        Ok(())
    }

    /// The factor of the adapter's term: alpha / r, or alpha / √r with rsLoRA (computed in f64 and
    /// rounded once, as PEFT's Python float meets an f32 tensor).
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.use_rslora { self.alpha / r.sqrt() } else { self.alpha / r }) as f32
    }

    /// Whether `target` is adapted.
    pub fn targets_module(&self, target: Target) -> bool {
        self.targets.contains(&target)
    }

    /// Reads PEFT's `adapter_config.json`. Features babelrl does not implement (DoRA, per-module rank
    /// or alpha patterns, bias training, modules to save, layer subsets, …) are refused by name.
    pub fn from_peft_file(path: &Path) -> Result<LoraConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config { path: path.into(), message: format!("not valid JSON: {e}") })?;
        Self::from_peft_json(path, &v)
    }

    pub(crate) fn from_peft_json(path: &Path, v: &Value) -> Result<LoraConfig> {
        let err = |message: String| Error::Config { path: path.into(), message };
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let field = |k: &str| obj.get(k).filter(|x| !x.is_null());
        match field("peft_type").and_then(Value::as_str) {
            Some("LORA") | None => {}
            Some(other) => return Err(err(format!("peft_type `{other}`: babelrl reads LORA adapters"))),
        }
        let r = field("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("`r` (the rank) must be a positive integer".into()))? as usize;
        let alpha = match field("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(a) => a.as_f64().ok_or_else(|| err(format!("`lora_alpha` must be a number, got {a}")))?,
        };
        let dropout = match field("lora_dropout") {
            None => 0.0,
            Some(d) => d.as_f64().ok_or_else(|| err(format!("`lora_dropout` must be a number, got {d}")))?,
        };
        let use_rslora = match field("use_rslora") {
            None => false,
            Some(b) => {
                b.as_bool().ok_or_else(|| err(format!("`use_rslora` must be true or false, got {b}")))?
            }
        };
        // Settings that change what the adapter computes: refused unless at their neutral value.
        let neutral: &[(&str, Neutral)] = &[
            ("use_dora", |x| x == &json!(false)),
            ("fan_in_fan_out", |x| x == &json!(false)),
            ("lora_bias", |x| x == &json!(false)),
            ("bias", |x| x == &json!("none")),
            ("rank_pattern", |x| x.as_object().is_some_and(|o| o.is_empty())),
            ("alpha_pattern", |x| x.as_object().is_some_and(|o| o.is_empty())),
            ("modules_to_save", |x| x.as_array().is_some_and(|a| a.is_empty())),
            ("layers_to_transform", |_| false),
            ("layer_replication", |_| false),
            ("exclude_modules", |x| x.as_array().is_some_and(|a| a.is_empty())),
            ("target_parameters", |x| x.as_array().is_some_and(|a| a.is_empty())),
            ("trainable_token_indices", |_| false),
            ("use_qalora", |x| x == &json!(false)),
            ("use_bdlora", |x| x == &json!(false)),
            ("alora_invocation_tokens", |_| false),
            ("arrow_config", |_| false),
            ("velora_config", |_| false),
            ("monteclora_config", |_| false),
            ("kasa_config", |_| false),
            // PiSSA, OLoRA, CorDA and LoftQ rewrite the base weights at initialisation: such an
            // adapter only fits the rewritten base, which PEFT does not save beside it.
            ("init_lora_weights", |x| {
                x.is_boolean() || matches!(x.as_str(), Some("gaussian" | "eva" | "orthogonal"))
            }),
        ];
        for (key, ok) in neutral {
            if let Some(x) = field(key).filter(|x| !ok(x)) {
                return Err(err(format!(
                    "`{key}` = {x}: babelrl does not support this PEFT feature (plain LoRA only)"
                )));
            }
        }
        let targets = match field("target_modules") {
            Some(Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
            Some(Value::String(s)) => {
                return Err(err(format!(
                    "target_modules is the pattern `{s}`; babelrl needs a list of module names \
                     (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or \"all-linear\""
                )));
            }
            Some(Value::Array(names)) => {
                let mut targets = Vec::new();
                for n in names {
                    let name =
                        n.as_str().ok_or_else(|| err(format!("target_modules: {n} is not a string")))?;
                    targets.push(Target::parse(name).ok_or_else(|| {
                        err(format!(
                            "target_modules: unknown module `{name}`; babelrl adapts q_proj, k_proj, \
                             v_proj, o_proj, gate_proj, up_proj and down_proj"
                        ))
                    })?);
                }
                targets
            }
            _ => return Err(err("`target_modules` is missing".into())),
        };
        let base_model = field("base_model_name_or_path").and_then(Value::as_str).map(str::to_owned);
        let mut cfg = LoraConfig::new(r, alpha, &targets).map_err(|e| err(e.to_string()))?;
        cfg.use_rslora = use_rslora;
        cfg.dropout = dropout;
        cfg.base_model = base_model;
        cfg.validate().map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }

    /// PEFT's `adapter_config.json` for this config (a causal-LM LoRA that PEFT's `from_pretrained`
    /// loads as is).
    pub fn to_peft_json(&self) -> Value {
        let modules: Vec<&str> = self.targets.iter().map(|t| t.peft_name()).collect();
        let alpha = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            json!(self.alpha as i64)
        } else {
            json!(self.alpha)
        };
        json!({
            "alpha_pattern": {},
            "base_model_name_or_path": self.base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_parse_in_every_spelling_and_nothing_else() {
        assert_eq!(Target::parse("q"), Some(Target::Q));
        assert_eq!(Target::parse("gate_proj"), Some(Target::Gate));
        assert_eq!(Target::parse("mlp.down_proj"), Some(Target::Down));
        assert_eq!(Target::parse("self_attn.down_proj"), None);
        assert_eq!(Target::parse("lm_head"), None);
        assert_eq!(Target::parse("embed_tokens"), None);
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r() {
        let mut c = LoraConfig::new(4, 8.0, &[Target::Q]).unwrap();
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn peft_json_round_trips_and_refuses_what_it_cannot_run() {
        let mut c = LoraConfig::new(16, 32.0, &[Target::V, Target::Q, Target::Down, Target::Q]).unwrap();
        c.use_rslora = true;
        c.dropout = 0.05;
        assert_eq!(c.targets, [Target::Q, Target::V, Target::Down]);
        let p = Path::new("adapter_config.json");
        assert_eq!(LoraConfig::from_peft_json(p, &c.to_peft_json()).unwrap(), c);
        for (key, value, says) in [
            ("use_dora", json!(true), "use_dora"),
            ("rank_pattern", json!({"q_proj": 4}), "rank_pattern"),
            ("target_modules", json!(["q_proj", "lm_head"]), "lm_head"),
            ("target_modules", json!(".*proj"), "pattern"),
            ("r", json!(0), "rank"),
            ("peft_type", json!("IA3"), "IA3"),
        ] {
            let mut v = c.to_peft_json();
            v[key] = value;
            let e = LoraConfig::from_peft_json(p, &v).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("adapter_config.json"), "{key}: {e}");
        }
        let mut v = c.to_peft_json();
        v["target_modules"] = json!("all-linear");
        assert_eq!(LoraConfig::from_peft_json(p, &v).unwrap().targets, Target::ALL);
    }
}
