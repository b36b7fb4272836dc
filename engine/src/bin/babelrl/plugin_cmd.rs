//! `babelrl plugin check` and `babelrl plugin score`: try a reward or router plugin outside a run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::model::{Encoder, RewardModel};
use babelrl::plugin::{
    Capabilities, ChooseRequest, HostServices, NoServices, PluginLimits, RewardPlugin, RouterPlugin,
    RunServices, Sample, World, inspect, read_jsonl, sample_from_json, text::sanitize,
};

/// Plugin tools.
#[derive(clap::Subcommand)]
pub enum PluginCmd {
    /// Load a plugin: which world it implements, configure it, make a sample call, show timings and the
    /// limits in force.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Languages given to a router's `configure` (comma-separated).
        #[arg(long, default_value = "en,fr,zh")]
        languages: String,
    },
    /// Score a JSONL data set with a reward plugin and print a summary.
    Score {
        /// The reward component (`.wasm`).
        #[arg(long)]
        plugin: PathBuf,
        /// Rows with `prompt`, `completion` and optionally `reference`, `language` and any other fields.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Field whose value groups rows (consecutive rows with equal values form a group); default
        /// `group` when rows have it, else the prompt.
        #[arg(long)]
        group_by: Option<String>,
        /// Also print every row's score as a JSON line.
        #[arg(long)]
        print_scores: bool,
    },
}

/// Settings shared by both commands.
#[derive(clap::Args)]
pub struct SandboxArgs {
    /// The plugin's config as JSON (passed to `configure`).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Limits as JSON, e.g. '{"deadline_ms": 500, "memory_mib": 64, "fuel": 100000000}'.
    #[arg(long)]
    limits: Option<String>,
    /// Capabilities as JSON, e.g. '{"stdout_log": true, "env": ["LANG"]}'.
    #[arg(long)]
    capabilities: Option<String>,
    /// Serve `embed` from this sentence encoder (a BERT / XLM-R folder, e.g.
    /// ~/.cache/babelrl/models/multilingual-e5-small); without it `embed` fails.
    #[arg(long, value_name = "DIR")]
    encoder: Option<PathBuf>,
    /// Serve `reward-model-score` from this reward model (a *ForSequenceClassification folder or a PEFT
    /// SEQ_CLS adapter); without it `reward-model-score` fails.
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
}

impl SandboxArgs {
    fn parse(&self) -> anyhow::Result<(String, PluginLimits, Capabilities)> {
        serde_json::from_str::<serde_json::Value>(&self.config).context("--config is not valid JSON")?;
        let limits = match &self.limits {
            Some(j) => serde_json::from_str(j).context("--limits")?,
            None => PluginLimits::default(),
        };
        let caps = match &self.capabilities {
            Some(j) => serde_json::from_str(j).context("--capabilities")?,
            None => Capabilities::default(),
        };
        Ok((self.config.clone(), limits, caps))
    }

    /// The host services the flags ask for, loaded now (a model that does not load is an error naming
    /// its flag); none without flags (no GPU is opened).
    fn services(&self) -> anyhow::Result<Arc<dyn HostServices>> {
        if self.encoder.is_none() && self.reward_model.is_none() {
            return Ok(Arc::new(NoServices));
        }
        let gpu = Gpu::new(&GpuOptions::from_env())?;
        let mut services = RunServices::new();
        if let Some(dir) = &self.encoder {
            let e = Encoder::load(Arc::clone(&gpu), dir)
                .with_context(|| format!("--encoder {}: the encoder does not load", shown(dir)))?;
            services = services.with_encoder(Arc::new(e));
        }
        if let Some(dir) = &self.reward_model {
            let rm = RewardModel::load(Arc::clone(&gpu), dir)
                .with_context(|| format!("--reward-model {}: the reward model does not load", shown(dir)))?;
            services = services.with_reward_model(Arc::new(rm));
        }
        Ok(Arc::new(services))
    }
}

/// Runs a plugin subcommand.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Check { file, sandbox, languages } => check(&file, &sandbox, &languages),
        PluginCmd::Score { plugin, data, sandbox, group_by, print_scores } => {
            score(&plugin, &data, &sandbox, group_by.as_deref(), print_scores)
        }
    }
}

/// The plugin's name, from its file name (which its author may have chosen to attack a terminal).
fn plugin_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    stem.map(|s| sanitize(&s).into_owned()).unwrap_or_else(|| "plugin".into())
}

/// A path as printed: control characters escaped.
fn shown(path: &Path) -> String {
    sanitize(&path.display().to_string()).into_owned()
}

fn check(file: &Path, args: &SandboxArgs, languages: &str) -> anyhow::Result<()> {
    let (config, limits, caps) = args.parse()?;
    let name = plugin_name(file);
    let size = std::fs::metadata(file).with_context(|| shown(file))?.len();
    let t0 = Instant::now();
    let (world, exports) = inspect(file, &limits)?;
    let compile = t0.elapsed();
    println!("plugin      {} ({size} bytes)", shown(file));
    println!("exports     {}", sanitize(&exports.join(", ")));
    let Some(world) = world else {
        bail!("plugin `{name}`: exports neither the reward world (configure, score) nor the router world");
    };
    println!("world       babelrl:plugin@0.1.0 {}", world.name());
    println!("compile     {} (or load from {})", ms(compile), shown(&babelrl::plugin::cache_dir()));
    let services = args.services()?;
    match world {
        World::Reward => {
            let t = Instant::now();
            let mut p = RewardPlugin::load(file, &name, &config, &limits, &caps, services)?;
            println!("configure   ok, {} (instantiate + configure)", ms(t.elapsed()));
            let group = vec![
                example("Translate to French: good morning", "bonjour", Some("bonjour"), "fr"),
                example("Translate to French: good morning", "good morning", Some("bonjour"), "fr"),
            ];
            let t = Instant::now();
            let scores = p.score(&group)?;
            println!("sample call score(2 samples) = {scores:?} in {}", ms(t.elapsed()));
        }
        World::Router => {
            let langs: Vec<String> = languages.split(',').map(|l| l.trim().to_string()).collect();
            let t = Instant::now();
            let mut r = RouterPlugin::load(file, &name, &config, &langs, &limits, &caps, services)?;
            println!(
                "configure   ok, {} (instantiate + configure, languages {})",
                ms(t.elapsed()),
                sanitize(&langs.join(","))
            );
            let request = ChooseRequest {
                question_id: "check-1".into(),
                topic: Some("general".into()),
                question_language: langs[0].clone(),
                k: 4,
                step: 0,
            };
            let t = Instant::now();
            let chosen = r.choose(&request)?;
            println!(
                "sample call choose(k = 4) = {} in {}",
                sanitize(&format!("{chosen:?}")),
                ms(t.elapsed())
            );
            let state = r.save_state()?;
            println!("state       {} bytes", state.len());
        }
    }
    println!("limits      {}", serde_json::to_string(&limits)?);
    println!("grants      {}", serde_json::to_string(&caps)?);
    Ok(())
}

fn example(prompt: &str, completion: &str, reference: Option<&str>, language: &str) -> Sample {
    Sample {
        prompt: prompt.into(),
        completion: completion.into(),
        reference: reference.map(Into::into),
        language: Some(language.into()),
        fields: Vec::new(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Rows of a JSONL file, grouped: consecutive rows with the same group key.
fn read_groups(data: &Path, group_by: Option<&str>) -> anyhow::Result<Vec<(usize, Vec<Sample>)>> {
    let mut groups: Vec<(usize, Vec<Sample>)> = Vec::new();
    let mut last_key: Option<String> = None;
    for (line, row) in read_jsonl(data)? {
        let at = format!("{}:{line}", shown(data));
        let key = match group_by {
            Some(field) => {
                row.get(field).map(|v| v.to_string()).with_context(|| format!("{at}: no `{field}`"))?
            }
            None => row.get("group").or_else(|| row.get("prompt")).map(|v| v.to_string()).unwrap_or_default(),
        };
        let sample = sample_from_json(&row, &at)?;
        match groups.last_mut() {
            Some((_, g)) if last_key.as_ref() == Some(&key) => g.push(sample),
            _ => groups.push((line, vec![sample])),
        }
        last_key = Some(key);
    }
    if groups.is_empty() {
        bail!("{}: no rows", shown(data));
    }
    Ok(groups)
}

fn score(
    file: &Path,
    data: &Path,
    args: &SandboxArgs,
    group_by: Option<&str>,
    print: bool,
) -> anyhow::Result<()> {
    let (config, limits, caps) = args.parse()?;
    let groups = read_groups(data, group_by)?;
    let name = plugin_name(file);
    let mut plugin = RewardPlugin::load(file, &name, &config, &limits, &caps, args.services()?)?;
    let (mut n, mut nones, mut sum) = (0usize, 0usize, 0f64);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut times = Vec::with_capacity(groups.len());
    for (line, group) in &groups {
        let t = Instant::now();
        let scores = plugin
            .score(group)
            .with_context(|| format!("group of {} rows starting at {}:{line}", group.len(), shown(data)))?;
        times.push(t.elapsed());
        for s in &scores {
            n += 1;
            match s {
                Some(v) => {
                    sum += f64::from(*v);
                    lo = lo.min(*v);
                    hi = hi.max(*v);
                }
                None => nones += 1,
            }
            if print {
                println!("{}", serde_json::json!({ "score": s }));
            }
        }
    }
    let scored = n - nones;
    let total: Duration = times.iter().sum();
    let slowest = times.iter().max().copied().unwrap_or_default();
    println!("plugin    {name} ({})", shown(file));
    println!("samples   {n} in {} groups", groups.len());
    println!("scored    {scored} (none: {nones})");
    if scored > 0 {
        println!("mean      {:.6}", sum / scored as f64);
        println!("min/max   {lo:.6} / {hi:.6}");
    }
    println!("per group mean {} (slowest {})", ms(total / groups.len() as u32), ms(slowest));
    Ok(())
}
