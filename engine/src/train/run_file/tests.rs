//! Tests of the run file: defaults, every key, unknown keys named with the file, path resolution,
//! the range checks and the conversions to the library's types.

use super::*;
use crate::train::grpo::{LossType, ScaleRewards};

const PATH: &str = "/work/runs/sft_french.toml";

fn parse(text: &str) -> Result<RunFile> {
    RunFile::from_toml(text, Path::new(PATH))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn an_sft_file_with_only_the_required_keys_takes_the_defaults() {
    let rf = parse("[sft]\ndata = \"train.jsonl\"\nmax_steps = 10\n").unwrap();
    assert_eq!(rf.model, ModelSection { path: None });
    assert_eq!(
        rf.lora,
        LoraSection {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
            init_from: None,
            seed: 0
        }
    );
    assert_eq!(rf.optimizer, AdamWConfig::default());
    assert_eq!(rf.schedule, ScheduleSection { lr_scheduler_type: SchedulerType::Linear, warmup_steps: 0.0 });
    let sft = rf.sft().unwrap();
    assert_eq!(
        *sft,
        SftSection {
            data: PathBuf::from("/work/runs/train.jsonl"),
            length: TrainLength::MaxSteps(10),
            batch_size: 8,
            gradient_accumulation_steps: 1,
            max_length: 1024,
            seed: 0,
            shuffle: true,
            gradient_checkpointing: false,
            learning_rate: None,
        }
    );
    assert_eq!(
        rf.output,
        OutputSection {
            dir: PathBuf::from("/work/runs/runs/sft_french"),
            save_steps: 1,
            save_total_limit: 2,
            logging_steps: 1
        }
    );
    assert_eq!(rf.path, Path::new(PATH));
    assert_eq!(rf.sha256.len(), 64);
    assert_ne!(rf.sha256, parse("[sft]\ndata = \"train.jsonl\"\nmax_steps = 11\n").unwrap().sha256);
}

const FULL: &str = r#"
[model]
path = "../models/SmolLM2.gguf"
[lora]
r = 8
alpha = 16.5
dropout = 0.05
use_rslora = true
target_modules = ["v_proj", "q", "mlp.down_proj", "q_proj"]
seed = 3
[optimizer]
learning_rate = 2e-4
adam_beta1 = 0.8
adam_beta2 = 0.99
adam_epsilon = 1e-6
weight_decay = 0.01
max_grad_norm = 0.5
[schedule]
lr_scheduler_type = "cosine"
warmup_steps = 0.1
[sft]
data = "/data/train.jsonl"
epochs = 2.5
batch_size = 4
gradient_accumulation_steps = 3
max_length = 256
seed = 9
shuffle = false
gradient_checkpointing = true
learning_rate = 2e-4
[output]
dir = "out"
save_steps = 0
save_total_limit = 0
logging_steps = 5
"#;

#[test]
fn every_section_and_key_is_read() {
    let rf = parse(FULL).unwrap();
    assert_eq!(rf.model.path, Some(PathBuf::from("/work/runs/../models/SmolLM2.gguf")));
    assert_eq!(
        rf.lora,
        LoraSection {
            r: 8,
            alpha: 16.5,
            dropout: 0.05,
            use_rslora: true,
            targets: vec![Target::Q, Target::V, Target::Down],
            init_from: None,
            seed: 3
        }
    );
    let want = AdamWConfig {
        learning_rate: 2e-4,
        adam_beta1: 0.8,
        adam_beta2: 0.99,
        adam_epsilon: 1e-6,
        weight_decay: 0.01,
        max_grad_norm: 0.5,
    };
    assert_eq!(rf.optimizer, want);
    assert_eq!(rf.schedule, ScheduleSection { lr_scheduler_type: SchedulerType::Cosine, warmup_steps: 0.1 });
    let sft = rf.sft().unwrap();
    assert_eq!(
        *sft,
        SftSection {
            data: PathBuf::from("/data/train.jsonl"),
            length: TrainLength::Epochs(2.5),
            batch_size: 4,
            gradient_accumulation_steps: 3,
            max_length: 256,
            seed: 9,
            shuffle: false,
            gradient_checkpointing: true,
            learning_rate: Some(2e-4),
        }
    );
    assert_eq!(
        rf.output,
        OutputSection {
            dir: PathBuf::from("/work/runs/out"),
            save_steps: 0,
            save_total_limit: 0,
            logging_steps: 5
        }
    );
    let cfg = rf.lora_config().unwrap();
    assert_eq!((cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora), (8, 16.5, 0.05, true));
    assert_eq!(cfg.targets, [Target::Q, Target::V, Target::Down]);
    // 10 examples in batches of 4: 3 batches, 1 optimizer step per epoch (3 accumulated); 2.5 epochs.
    assert_eq!(sft.total_steps(10), 3);
    // 100 examples: 25 batches, ⌈25 / 3⌉ = 9 steps per epoch; ⌈2.5 · 9⌉ = 23.
    assert_eq!(sft.total_steps(100), 23);
    let s = rf.schedule(23).unwrap();
    assert_eq!((s.kind, s.warmup_steps, s.total_steps), (SchedulerType::Cosine, 3, 23));
}

#[test]
fn an_unknown_key_in_any_section_is_named_with_the_file() {
    let cases = [
        ("[model]\npaht = \"m\"\n", "paht"),
        ("[lora]\nrank = 4\n", "rank"),
        ("[optimizer]\nlr = 1e-4\n", "lr"),
        ("[schedule]\nwarmup_ratio = 0.1\n", "warmup_ratio"),
        ("[sft]\ndata = \"d\"\nmax_steps = 1\nnum_train_epochs = 1\n", "num_train_epochs"),
        ("[output]\noutput_dir = \"o\"\n", "output_dir"),
        ("[grpo]\ndata = \"d\"\nmax_steps = 1\nlearning_rat = 1\n", "learning_rat"),
        ("[ppo]\nbeta = 0.1\n", "ppo"),
        ("top_level = 1\n", "top_level"),
    ];
    for (text, key) in cases {
        let e = error(text);
        assert!(e.contains(&format!("unknown field `{key}`")) && e.contains(PATH), "{key}: {e}");
    }
}

#[test]
fn relative_paths_resolve_against_the_run_files_folder() {
    let text = "[model]\npath = \"m.gguf\"\n[lora]\ninit_from = \"../adapters/a\"\n\
                [sft]\ndata = \"d/train.jsonl\"\nmax_steps = 1\n";
    let rf = RunFile::from_toml(text, Path::new("exp/run.toml")).unwrap();
    assert_eq!(rf.model.path.unwrap(), Path::new("exp/m.gguf"));
    assert_eq!(rf.lora.init_from.unwrap(), Path::new("exp/../adapters/a"));
    assert_eq!(rf.sft.unwrap().data, Path::new("exp/d/train.jsonl"));
    assert_eq!(rf.output.dir, Path::new("exp/runs/run"));
    // A run file in the current folder: paths stay relative to it.
    let rf = RunFile::from_toml("[output]\ndir = \"o\"", Path::new("run.toml")).unwrap();
    assert_eq!(rf.output.dir, Path::new("o"));
    // load reads the file and resolves against its folder.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "[sft]\ndata = \"t.jsonl\"\nmax_steps = 2\n").unwrap();
    assert_eq!(RunFile::load(&path).unwrap().sft().unwrap().data, dir.path().join("t.jsonl"));
    let e = RunFile::load(&dir.path().join("absent.toml")).unwrap_err().to_string();
    assert!(e.contains("absent.toml"), "{e}");
}

#[test]
fn the_length_of_an_sft_run_is_max_steps_or_epochs_exactly_one() {
    let e = error("[sft]\ndata = \"d\"\nmax_steps = 5\nepochs = 1\n");
    assert!(e.contains("max_steps and epochs are both set") && e.contains(PATH), "{e}");
    let e = error("[sft]\ndata = \"d\"\n");
    assert!(e.contains("[sft] needs max_steps") && e.contains(PATH), "{e}");
    let e = error("[sft]\nmax_steps = 5\n");
    assert!(e.contains("[sft] data is missing"), "{e}");
    let e = parse("[lora]\nr = 4\n").unwrap().sft().unwrap_err().to_string();
    assert!(e.contains("no [sft] section") && e.contains(PATH), "{e}");
    // max_steps ignores the data size; epochs of an empty data set still make one step.
    let rf = parse("[sft]\ndata = \"d\"\nmax_steps = 7\n").unwrap();
    assert_eq!(rf.sft().unwrap().total_steps(1000), 7);
    let rf = parse("[sft]\ndata = \"d\"\nepochs = 1\n").unwrap();
    assert_eq!(rf.sft().unwrap().total_steps(0), 1);
    assert_eq!(rf.sft().unwrap().total_steps(17), 3);
}

#[test]
fn out_of_range_values_are_named_by_section_and_key() {
    let sft = |extra: &str| format!("[sft]\ndata = \"d\"\nmax_steps = 1\n{extra}\n");
    let cases = [
        (sft("batch_size = 0"), "[sft] batch_size = 0"),
        (sft("gradient_accumulation_steps = 0"), "[sft] gradient_accumulation_steps = 0"),
        (sft("max_length = 1"), "[sft] max_length = 1"),
        ("[sft]\ndata = \"d\"\nmax_steps = 0\n".into(), "[sft] max_steps = 0"),
        ("[sft]\ndata = \"d\"\nepochs = 0.0\n".into(), "[sft] epochs = 0"),
        ("[sft]\ndata = \"d\"\nepochs = nan\n".into(), "[sft] epochs = NaN"),
        ("[lora]\nr = 0\n".into(), "[lora] r = 0"),
        ("[lora]\nalpha = inf\n".into(), "[lora] alpha = inf"),
        ("[lora]\ndropout = 1.0\n".into(), "[lora] dropout = 1"),
        ("[lora]\ntarget_modules = [\"lm_head\"]\n".into(), "unknown module `lm_head`"),
        ("[lora]\ntarget_modules = []\n".into(), "[lora] target_modules is empty"),
        ("[lora]\ntarget_modules = \".*proj\"\n".into(), "[lora] target_modules = \".*proj\""),
        ("[optimizer]\nadam_beta1 = 1.0\n".into(), "[optimizer] optimizer option `adam_beta1`"),
        ("[schedule]\nwarmup_steps = -1.0\n".into(), "[schedule] warmup_steps = -1"),
        ("[schedule]\nlr_scheduler_type = \"polynomial\"\n".into(), "polynomial"),
        ("[output]\nlogging_steps = 0\n".into(), "[output] logging_steps = 0"),
        ("[lora]\nr = -1\n".into(), "r = -1"),
        ("[sft]\ndata = 3\nmax_steps = 1\n".into(), "data = 3"),
    ];
    for (text, says) in cases {
        let e = error(&text);
        assert!(e.contains(says) && e.contains(PATH), "{text:?}: {e}");
    }
}

#[test]
fn init_from_excludes_the_options_it_decides() {
    let rf = parse("[lora]\ninit_from = \"/adapters/fr\"\n").unwrap();
    assert_eq!(rf.lora.init_from, Some(PathBuf::from("/adapters/fr")));
    for key in
        ["r = 4", "alpha = 8.0", "dropout = 0.1", "use_rslora = true", "target_modules = [\"q\"]", "seed = 1"]
    {
        let e = error(&format!("[lora]\ninit_from = \"a\"\n{key}\n"));
        let name = key.split(' ').next().unwrap();
        assert!(e.contains(&format!("[lora] {name}: with init_from")), "{key}: {e}");
    }
    // "all-linear" is all seven projections.
    let rf = parse("[lora]\ntarget_modules = \"all-linear\"\n").unwrap();
    assert_eq!(rf.lora_config().unwrap().targets, Target::ALL);
}

const REWARD: &str = "[[reward]]\nname = \"em\"\npath = \"plugins/exact_match.wasm\"\n";

#[test]
fn a_grpo_file_takes_trls_names_and_defaults_and_its_rewards() {
    let rf = parse(&format!("[grpo]\ndata = \"prompts.jsonl\"\nmax_steps = 5\n\n{REWARD}")).unwrap();
    let (g, rewards) = rf.grpo().unwrap();
    assert_eq!(g.data, Path::new("/work/runs/prompts.jsonl"));
    assert_eq!((g.num_generations, g.prompts_per_step, g.max_steps), (8, 1, 5));
    assert_eq!(
        (g.max_prompt_length, g.max_completion_length, g.temperature, g.top_p, g.top_k),
        (512, 256, 1.0, 1.0, 0)
    );
    assert_eq!((g.loss_type, g.beta, g.epsilon, g.epsilon_high), (LossType::Dapo, 0.0, 0.2, None));
    assert_eq!((g.scale_rewards, g.mask_truncated_completions), (ScaleRewards::Group, false));
    assert_eq!(rewards.rewards[0].path, Path::new("/work/runs/plugins/exact_match.wasm"));
    assert!(rf.sft().is_err() && rf.sft.is_none());

    let rf = parse(&format!(
        "on_error = \"skip\"\n[grpo]\ndata = \"p\"\nmax_steps = 2\nnum_generations = 4\n\
         per_device_train_batch_size = 8\nloss_type = \"dr_grpo\"\nepsilon_high = 0.28\nscale_rewards = false\n\
         mask_truncated_completions = true\ntemperature = 0.7\ntop_p = 0.9\ntop_k = 50\nseed = 3\n\
         max_completion_length = 32\n\n{REWARD}"
    ))
    .unwrap();
    let (g, rewards) = rf.grpo().unwrap();
    assert_eq!((g.num_generations, g.prompts_per_step, g.loss_type), (4, 2, LossType::DrGrpo));
    assert_eq!(
        (g.epsilon_high, g.scale_rewards, g.mask_truncated_completions),
        (Some(0.28), ScaleRewards::None, true)
    );
    assert_eq!(rewards.on_error, crate::plugin::OnError::Skip);
    let sampling = g.sampling();
    assert_eq!(
        (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_new_tokens),
        (0.7, 0.9, 50, 32)
    );
    assert_eq!(g.loss().max_completion_length, 32);
    assert_eq!((g.gradient_accumulation_steps, g.num_iterations), (1, 1));

    // TRL's per_device_train_batch_size counts one micro-batch: 6 completions × 2 micro-batches = 3
    // prompts of 4.
    let rf = parse(&format!(
        "[grpo]\ndata = \"p\"\nmax_steps = 4\nnum_generations = 4\nper_device_train_batch_size = 6\n\
         gradient_accumulation_steps = 2\nnum_iterations = 2\n\n{REWARD}"
    ))
    .unwrap();
    let (g, _) = rf.grpo().unwrap();
    assert_eq!((g.prompts_per_step, g.gradient_accumulation_steps, g.num_iterations), (3, 2, 2));
    assert_eq!(g.loss().gradient_accumulation_steps, 2);
}

#[test]
fn bad_grpo_files_are_clear_errors() {
    let grpo = |extra: &str| format!("[grpo]\ndata = \"p\"\nmax_steps = 2\n{extra}\n\n{REWARD}");
    let cases = [
        (grpo("beta = -0.04"), "[grpo] beta = -0.04"),
        (grpo("num_generations = 1"), "[grpo] num_generations = 1"),
        (grpo("num_generations = 4\nper_device_train_batch_size = 6"), "multiple of num_generations = 4"),
        (grpo("prompts_per_step = 1\nper_device_train_batch_size = 8"), "both set"),
        (grpo("scale_rewards = \"batchy\""), "scale_rewards = \"batchy\""),
        (grpo("temperature = 0.0"), "[grpo] temperature = 0"),
        (grpo("loss_type = \"ppo\""), "ppo"),
        (grpo("max_completion_length = 0"), "[grpo] max_completion_length = 0"),
        (grpo("num_iterations = 0"), "[grpo] num_iterations = 0"),
        (grpo("num_iterations = 3"), "max_steps = 2 is not a multiple of num_iterations = 3"),
        (grpo("num_generations = 4\ngradient_accumulation_steps = 3"), "equal micro-batches"),
        ("[grpo]\ndata = \"p\"\nmax_steps = 2\n".into(), "[grpo] needs at least one [[reward]]"),
        ("[grpo]\nmax_steps = 2\n".into(), "[grpo] data is missing"),
        (format!("[grpo]\ndata = \"p\"\n{REWARD}"), "[grpo] max_steps is missing"),
        (grpo("learning_rate = 0.0"), "[grpo] learning_rate = 0"),
        (
            "[sft]\ndata = \"d\"\nmax_steps = 1\nlearning_rate = -1e-5\n".into(),
            "[sft] learning_rate = -0.00001",
        ),
        (format!("[sft]\ndata = \"d\"\nmax_steps = 1\nbeta = 0.1\n{}", grpo("")), "unknown field `beta`"),
        (format!("[sft]\ndata = \"d\"\nmax_steps = 1\n{REWARD}"), "[[reward]] belongs to a [grpo] job"),
        (grpo("").replace("name = \"em\"", "name = \"em\"\nwieght = 2"), "wieght"),
    ];
    for (text, want) in cases {
        let e = error(&text);
        assert!(e.contains(want) && e.contains(PATH), "{want}: {e}");
    }
    let e = parse("[lora]\nr = 4\n").unwrap().grpo().unwrap_err().to_string();
    assert!(e.contains("no [grpo] section"), "{e}");
}

#[test]
fn encoder_and_reward_model_tables_serve_a_grpo_job() {
    let base = format!("[grpo]\ndata = \"p\"\nmax_steps = 2\n\n{REWARD}");
    let rf = parse(&base).unwrap();
    assert_eq!((rf.encoder.clone(), rf.reward_model.clone()), (None, None));
    let rf = parse(&format!("{base}\n[encoder]\n")).unwrap();
    assert_eq!(rf.encoder, Some(EncoderSection { path: None }));
    let rf = parse(&format!("{base}\n[encoder]\npath = \"enc\"\n[reward_model]\npath = \"/models/rm\"\n"))
        .unwrap();
    assert_eq!(rf.encoder, Some(EncoderSection { path: Some(PathBuf::from("/work/runs/enc")) }));
    assert_eq!(rf.reward_model, Some(RewardModelSection { path: PathBuf::from("/models/rm") }));
    let cases = [
        (format!("{base}\n[reward_model]\n"), "[reward_model] path is missing"),
        (format!("{base}\n[encoder]\npth = \"e\"\n"), "pth"),
        (format!("{base}\n[reward_model]\npath = \"r\"\nbatch = 3\n"), "batch"),
        (
            "[sft]\ndata = \"d\"\nmax_steps = 1\n[encoder]\npath = \"e\"\n".into(),
            "[encoder] belongs to a [grpo] job",
        ),
        (
            "[sft]\ndata = \"d\"\nmax_steps = 1\n[reward_model]\npath = \"r\"\n".into(),
            "[reward_model] belongs to",
        ),
    ];
    for (text, want) in cases {
        let e = error(&text);
        assert!(e.contains(want) && e.contains(PATH), "{want}: {e}");
    }
}

const GRPO: &str = "[grpo]\ndata = \"p\"\nmax_steps = 2\nnum_generations = 4\n";

#[test]
fn a_router_table_takes_its_defaults_names_and_settings() {
    let router = "[router]\nname = \"lrpo\"\npath = \"plugins/lrpo_softmax.wasm\"\nlanguages = [\"en\", \"zho_Hans\"]\n";
    let rf = parse(&format!("{GRPO}\n{REWARD}\n{router}")).unwrap();
    let r = rf.router.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.path.as_path()),
        ("lrpo", Path::new("/work/runs/plugins/lrpo_softmax.wasm"))
    );
    assert_eq!((r.keep_original, r.template.source()), (1, crate::train::grpo::DEFAULT_TEMPLATE));
    let names: Vec<(&str, &str)> = r.language_names.iter().map(|(l, n)| (l.as_str(), n.as_str())).collect();
    assert_eq!(names, [("en", "English"), ("zho_Hans", "Simplified Chinese")]);
    assert_eq!(
        (r.config.clone(), r.limits.clone()),
        (serde_json::json!({}), crate::plugin::PluginLimits::default())
    );

    let rf = parse(&format!(
        "{GRPO}\n{REWARD}\n{router}keep_original = 4\ntemplate = \"{{prompt}} [{{language}}]\"\n\
         limits = {{ deadline_ms = 50 }}\n[router.config]\nseed = 7\nbias = {{ en = 0.5 }}\n\
         [router.language_names]\nen = \"Englisch\"\n"
    ))
    .unwrap();
    let r = rf.router.unwrap();
    assert_eq!((r.keep_original, r.template.render("q", "en", "-")), (4, "q [en]".to_string()));
    assert_eq!(r.language_names["en"], "Englisch");
    assert_eq!(r.config, serde_json::json!({"seed": 7, "bias": {"en": 0.5}}));
    assert_eq!(r.limits.deadline_ms, 50);
    // A template without {language_name} needs no names.
    let text = format!("{GRPO}\n{REWARD}\n{router}template = \"{{prompt}} ({{language}})\"\n");
    let rf = parse(&text.replace("\"zho_Hans\"", "\"xx_Klingon\"")).unwrap();
    assert_eq!(rf.router.unwrap().language_names["xx_Klingon"], "xx_Klingon");
    assert!(parse(&format!("{GRPO}\n{REWARD}")).unwrap().router.is_none());
}

#[test]
fn bad_router_tables_are_clear_errors() {
    let ok = "name = \"r\"\npath = \"r.wasm\"\nlanguages = [\"en\", \"fr\"]\n";
    let router = |extra: &str| format!("{GRPO}\n{REWARD}\n[router]\n{ok}{extra}\n");
    let cases = [
        (router("keep_orignal = 2"), "keep_orignal"),
        (router("keep_original = 5"), "[router] keep_original = 5: at most [grpo] num_generations = 4"),
        (router("").replace("\"fr\"", "\"tlh\""), "[router] languages: \"tlh\" has no built-in name"),
        (router("").replace("\"fr\"", "\"en\""), "[router] languages: \"en\" is listed twice"),
        (router("").replace("[\"en\", \"fr\"]", "[]"), "[router] languages is empty"),
        (router("").replace("name = \"r\"\n", ""), "[router] name is missing"),
        (router("").replace("path = \"r.wasm\"\n", ""), "[router] path is missing"),
        (router("").replace("languages = [\"en\", \"fr\"]\n", ""), "[router] languages is missing"),
        (router("template = \"Answer in {language_name}.\""), "[router] template has no {prompt}"),
        (router("template = \"{prompt} {lang}\""), "[router] template unknown placeholder `{lang}`"),
        (router("template = \"{prompt}\""), "[router] template names no language"),
        (router("limits = { deadline_ms = 0 }"), "[router] limits.deadline_ms must be at least 1"),
        (router("limits = { deadline = 5 }"), "deadline"),
        (router("[router.language_names]\nde = \"German\""), "[router.language_names] names \"de\""),
        (format!("[sft]\ndata = \"d\"\nmax_steps = 1\n[router]\n{ok}"), "[router] belongs to a [grpo] job"),
    ];
    for (text, want) in cases {
        let e = error(&text);
        assert!(e.contains(want) && e.contains(PATH), "{want}: {e}");
    }
}

#[test]
fn sft_and_grpo_together_are_two_stages_with_their_own_folders_and_learning_rates() {
    let two = format!(
        "[optimizer]\nlearning_rate = 1e-4\n[sft]\ndata = \"d\"\nmax_steps = 3\n\
         [grpo]\ndata = \"p\"\nmax_steps = 2\nlearning_rate = 1e-6\n\n{REWARD}"
    );
    let rf = parse(&two).unwrap();
    assert_eq!(rf.stages(), [Stage::Sft, Stage::Grpo]);
    assert!(rf.is_two_stage() && rf.sft().is_ok() && rf.grpo().is_ok());
    let out = Path::new("/work/runs/runs/sft_french");
    assert_eq!(rf.stage_dir(Stage::Sft), out.join("sft"));
    assert_eq!(rf.stage_dir(Stage::Grpo), out.join("grpo"));
    assert_eq!(rf.stage_adapter_dir(Stage::Sft), out.join("sft-adapter"));
    assert_eq!(rf.stage_adapter_dir(Stage::Grpo), out.join("adapter"));
    assert_eq!(rf.optimizer_for(Stage::Sft).learning_rate, 1e-4);
    assert_eq!(rf.optimizer_for(Stage::Grpo), AdamWConfig { learning_rate: 1e-6, ..rf.optimizer });

    // A one-stage run keeps its checkpoints and adapter directly in the output folder.
    let one = parse("[sft]\ndata = \"d\"\nmax_steps = 3\n").unwrap();
    assert_eq!(one.stages(), [Stage::Sft]);
    assert_eq!(
        (one.stage_dir(Stage::Sft), one.stage_adapter_dir(Stage::Sft)),
        (out.into(), out.join("adapter"))
    );
}

#[test]
fn a_checkpoint_of_another_stage_layout_is_refused_naming_both() {
    let two = parse(&format!(
        "[sft]\ndata = \"d\"\nmax_steps = 3\n[grpo]\ndata = \"p\"\nmax_steps = 2\n\n{REWARD}"
    ))
    .unwrap();
    let one = parse(&format!("[grpo]\ndata = \"p\"\nmax_steps = 2\n\n{REWARD}")).unwrap();
    let state = |stage: Option<Stage>, stages: Vec<Stage>| crate::train::TrainerState {
        format: crate::train::CHECKPOINT_FORMAT.into(),
        step: 2,
        schedule: crate::train::Schedule::new(SchedulerType::Constant, 0.0, 2).unwrap(),
        seed: 0,
        data_seed: 0,
        examples_seen: 2,
        epoch: 0,
        run_file_sha256: String::new(),
        base_model: String::new(),
        stage,
        stages,
        metrics: Default::default(),
    };
    let dir = Path::new("/work/runs/out/checkpoint-2");
    let both = vec![Stage::Sft, Stage::Grpo];
    assert_eq!(two.resume_stage(&state(Some(Stage::Grpo), both.clone()), dir).unwrap(), Stage::Grpo);
    assert_eq!(two.resume_stage(&state(Some(Stage::Sft), both.clone()), dir).unwrap(), Stage::Sft);
    assert_eq!(one.resume_stage(&state(Some(Stage::Grpo), vec![Stage::Grpo]), dir).unwrap(), Stage::Grpo);
    // A checkpoint from before stages were recorded continues a one-stage run.
    assert_eq!(one.resume_stage(&state(None, vec![]), dir).unwrap(), Stage::Grpo);
    let cases = [
        (
            &one,
            state(Some(Stage::Grpo), both.clone()),
            "[grpo] stage of a run with [sft] then [grpo]; this run file has [grpo]",
        ),
        (
            &two,
            state(Some(Stage::Grpo), vec![Stage::Grpo]),
            "[grpo] stage of a run with [grpo]; this run file has [sft] then [grpo]",
        ),
        (&two, state(None, vec![]), "one-stage run"),
    ];
    for (rf, st, want) in cases {
        let e = rf.resume_stage(&st, dir).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("checkpoint-2") && e.contains(PATH), "{want}: {e}");
    }
}

#[test]
fn the_semantic_recipe_is_a_valid_two_stage_run_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/semantic/recipe.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rf = RunFile::from_toml(&text, &path).unwrap();
    assert!(rf.encoder.is_some(), "the recipe names its encoder");
    assert_eq!(rf.stages(), [Stage::Sft, Stage::Grpo]);
    let data = |p: &Path| p.strip_prefix(path.parent().unwrap()).unwrap().to_path_buf();
    let pair = Path::new("../data/flores/eng_Latn-zho_Hans");
    assert_eq!(data(&rf.sft().unwrap().data), pair.join("sft.jsonl"));
    let (g, rewards) = rf.grpo().unwrap();
    assert_eq!(data(&g.data), pair.join("grpo.jsonl"));
    assert!(rf.optimizer_for(Stage::Grpo).learning_rate < rf.optimizer_for(Stage::Sft).learning_rate);
    let got: Vec<(&str, f32, &str)> = rewards
        .rewards
        .iter()
        .map(|r| (r.name.as_str(), r.weight, r.path.file_name().unwrap().to_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("semantic", 1.0, "semantic_similarity.wasm"),
            ("language", 0.5, "language_consistency.wasm"),
            ("length", 0.5, "length_guard.wasm")
        ]
    );
    assert_eq!(rewards.rewards[0].config, serde_json::json!({"mode": "threshold", "tau": 0.8}));
}

#[test]
fn the_lrpo_examples_are_valid_run_files_with_the_same_budget() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lrpo");
    let lrpo = RunFile::load(&dir.join("mgsm.toml")).unwrap();
    let fixed = RunFile::load(&dir.join("fixed.toml")).unwrap();
    assert_eq!(lrpo.grpo, fixed.grpo, "the two runs must differ only in their router");
    let (a, b) = (lrpo.router.unwrap(), fixed.router.unwrap());
    assert_eq!((a.name.as_str(), b.name.as_str()), ("lrpo", "fixed"));
    assert!(a.path.ends_with("lrpo_softmax.wasm") && b.path.ends_with("fixed.wasm"));
    assert_eq!((a.languages, a.keep_original), (b.languages, b.keep_original));
}
