//! Tests of checkpoints without a GPU: the adapter's two files are written by a stand-in (the real
//! adapter's round trip is in tests/inference/train_checkpoint.rs).

use super::*;
use crate::train::{ParamState, SchedulerType};

fn state(step: u64) -> TrainerState {
    TrainerState {
        format: CHECKPOINT_FORMAT.into(),
        step,
        schedule: Schedule::new(SchedulerType::Cosine, 0.1, 100).unwrap(),
        seed: 3,
        data_seed: 4,
        examples_seen: 8 * step,
        epoch: step / 10,
        run_file_sha256: "ab".repeat(32),
        base_model: "smollm2-135m sha256:0123".into(),
        stage: Some(Stage::Grpo),
        stages: vec![Stage::Sft, Stage::Grpo],
        metrics: serde_json::json!({"loss": 1.25, "grad_norm": null}).as_object().unwrap().clone(),
    }
}

fn optim(step: u64) -> AdamWState {
    AdamWState {
        step,
        params: vec![
            ParamState {
                name: "layers.0.q.lora_A".into(),
                exp_avg: vec![-0.0, 1e-45, f32::MIN_POSITIVE, step as f32],
                exp_avg_sq: vec![0.0, 3.4e38, 1.0 / 3.0, 2.0],
            },
            ParamState { name: "layers.0.q.lora_B".into(), exp_avg: vec![1.5], exp_avg_sq: vec![2.25] },
        ],
    }
}

/// Stands in for `Adapter::save_peft`: the two PEFT files, tagged with `tag`.
fn fake_adapter(tag: &str) -> impl FnOnce(&Path) -> Result<()> + '_ {
    move |dir| {
        std::fs::write(dir.join(CONFIG_FILE), format!("{{\"r\": 4, \"tag\": \"{tag}\"}}")).unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), tag.as_bytes()).unwrap();
        Ok(())
    }
}

fn save(out: &Path, step: u64, tag: &str) -> PathBuf {
    save_checkpoint_with(out, fake_adapter(tag), &optim(step), &state(step)).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn bits(s: &AdamWState) -> Vec<Vec<u32>> {
    s.params
        .iter()
        .flat_map(|p| [&p.exp_avg, &p.exp_avg_sq])
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_checkpoint_loads_back_exactly() {
    let out = tempfile::tempdir().unwrap();
    let dir = save(out.path(), 7, "seven");
    assert_eq!(dir, out.path().join("checkpoint-7"));
    assert_eq!(names(out.path()), ["checkpoint-7"], "no temporary folder is left behind");
    assert_eq!(
        names(&dir),
        ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    );
    let ck = load_checkpoint(&dir).unwrap();
    assert_eq!(ck.state, state(7));
    assert_eq!((ck.optimizer.step, bits(&ck.optimizer)), (7, bits(&optim(7))));
    assert_eq!(ck.adapter_dir, dir);
    assert_eq!(std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(), b"seven");
    // Without metrics, the field is left out and reads back empty.
    let mut s = state(8);
    s.metrics.clear();
    let dir = save_checkpoint_with(out.path(), fake_adapter("x"), &optim(8), &s).unwrap();
    assert!(!std::fs::read_to_string(dir.join(TRAINER_STATE_FILE)).unwrap().contains("metrics"));
    assert_eq!(load_checkpoint(&dir).unwrap().state, s);
}

#[test]
fn the_latest_checkpoint_is_the_newest_complete_one() {
    let out = tempfile::tempdir().unwrap();
    assert_eq!(latest_checkpoint(&out.path().join("absent")).unwrap(), None);
    assert_eq!(latest_checkpoint(out.path()).unwrap(), None);
    for step in [2, 10, 5] {
        save(out.path(), step, "t");
    }
    // A save that died half-way (a temporary folder with some files), a checkpoint folder missing its
    // state, folders and files that only look like checkpoints.
    let half = out.path().join(".tmp-checkpoint-20-999-1");
    std::fs::create_dir(&half).unwrap();
    std::fs::write(half.join(CONFIG_FILE), "{}").unwrap();
    std::fs::write(half.join(TRAINER_STATE_FILE), "{").unwrap();
    let incomplete = out.path().join("checkpoint-30");
    std::fs::create_dir(&incomplete).unwrap();
    fake_adapter("i")(&incomplete).unwrap();
    std::fs::create_dir(out.path().join("checkpoint-x40")).unwrap();
    std::fs::create_dir(out.path().join("checkpoint-+50")).unwrap();
    std::fs::write(out.path().join("checkpoint-60"), "a file").unwrap();
    assert_eq!(latest_checkpoint(out.path()).unwrap(), Some(out.path().join("checkpoint-10")));
    // The next save clears the dead temporary folder.
    save(out.path(), 11, "t");
    assert!(!half.exists());
    assert_eq!(latest_checkpoint(out.path()).unwrap(), Some(out.path().join("checkpoint-11")));
}

#[test]
fn saving_a_step_again_replaces_it() {
    let out = tempfile::tempdir().unwrap();
    save(out.path(), 4, "first");
    let dir = save(out.path(), 4, "second");
    assert_eq!(names(out.path()), ["checkpoint-4"]);
    assert_eq!(std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(), b"second");
    assert_eq!(load_checkpoint(&dir).unwrap().state, state(4));
}

#[test]
fn a_failed_save_leaves_nothing() {
    let out = tempfile::tempdir().unwrap();
    let e = save_checkpoint_with(out.path(), |_| Err(Error::Gpu("lost".into())), &optim(3), &state(3));
    assert!(e.is_err());
    // An adapter writer that forgets a file is caught before the rename.
    let partial = |d: &Path| std::fs::write(d.join(CONFIG_FILE), "{}").map_err(|e| Error::io(d, e));
    let e = save_checkpoint_with(out.path(), partial, &optim(3), &state(3)).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_FILE), "{e}");
    assert!(names(out.path()).is_empty(), "{:?}", names(out.path()));
    // States that do not fit together are refused.
    let e = save_checkpoint_with(out.path(), fake_adapter("t"), &optim(2), &state(3)).unwrap_err();
    assert!(e.to_string().contains("optimizer state is at step 2"), "{e}");
    let mut s = state(3);
    s.format = "other".into();
    let e = save_checkpoint_with(out.path(), fake_adapter("t"), &optim(3), &s).unwrap_err();
    assert!(e.to_string().contains("format `other`"), "{e}");
}

#[test]
fn a_folder_that_is_not_a_checkpoint_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let good = save(out.path(), 1, "t");
    let case = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let dir = out.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for f in names(&good) {
            std::fs::copy(good.join(&f), dir.join(&f)).unwrap();
        }
        edit(&dir);
        load_checkpoint(&dir).unwrap_err().to_string()
    };
    let clear = |e: &str, dir: &str, file: &str| {
        assert!(e.contains(dir) && e.contains(file) && e.contains("not a babelrl checkpoint"), "{dir}: {e}")
    };
    let e = case("empty", &|d| names(d).iter().for_each(|f| std::fs::remove_file(d.join(f)).unwrap()));
    clear(&e, "empty", "trainer_state.json is missing");
    let e = case("peft-only", &|d| {
        std::fs::remove_file(d.join(TRAINER_STATE_FILE)).unwrap();
        std::fs::remove_file(d.join(OPTIMIZER_FILE)).unwrap();
    });
    clear(&e, "peft-only", "trainer_state.json is missing");
    let e = case("no-optimizer", &|d| std::fs::remove_file(d.join(OPTIMIZER_FILE)).unwrap());
    clear(&e, "no-optimizer", "optimizer.safetensors is missing");
    let e = case("no-weights", &|d| std::fs::remove_file(d.join(WEIGHTS_FILE)).unwrap());
    clear(&e, "no-weights", "adapter_model.safetensors is missing");
    let e = case("garbage", &|d| std::fs::write(d.join(TRAINER_STATE_FILE), "step = 3").unwrap());
    clear(&e, "garbage/trainer_state.json", "not JSON");
    let e = case("hf", &|d| std::fs::write(d.join(TRAINER_STATE_FILE), r#"{"global_step": 3}"#).unwrap());
    clear(&e, "hf/trainer_state.json", "no `format` field");
    let e = case("v2", &|d| {
        let text = std::fs::read_to_string(d.join(TRAINER_STATE_FILE)).unwrap();
        std::fs::write(d.join(TRAINER_STATE_FILE), text.replace(CHECKPOINT_FORMAT, "babelrl-checkpoint-2"))
            .unwrap()
    });
    clear(&e, "v2/trainer_state.json", "format `babelrl-checkpoint-2`");
    let e = case("extra", &|d| {
        let text = std::fs::read_to_string(d.join(TRAINER_STATE_FILE)).unwrap();
        std::fs::write(d.join(TRAINER_STATE_FILE), text.replacen('{', "{\"rng\": 1,", 1)).unwrap()
    });
    clear(&e, "extra/trainer_state.json", "unknown field `rng`");
    let e = case("bad-optimizer", &|d| std::fs::write(d.join(OPTIMIZER_FILE), b"junk").unwrap());
    assert!(e.contains("bad-optimizer/optimizer.safetensors") && e.contains("not a safetensors"), "{e}");
    let e = case("mixed", &|d| {
        std::fs::write(d.join(OPTIMIZER_FILE), optim(2).to_safetensors().unwrap()).unwrap()
    });
    assert!(e.contains("mixed") && e.contains("different checkpoints"), "{e}");
    let e = load_checkpoint(&out.path().join("absent")).unwrap_err().to_string();
    clear(&e, "absent", "no such folder");
}

#[test]
fn pruning_keeps_the_newest() {
    let out = tempfile::tempdir().unwrap();
    for step in [1, 2, 3, 10, 20] {
        save(out.path(), step, "t");
    }
    assert!(prune_checkpoints(out.path(), 0).unwrap().is_empty(), "0 keeps all");
    assert!(prune_checkpoints(out.path(), 5).unwrap().is_empty());
    let removed = prune_checkpoints(out.path(), 2).unwrap();
    assert_eq!(removed, [1, 2, 3].map(|s| out.path().join(format!("checkpoint-{s}"))));
    assert_eq!(names(out.path()), ["checkpoint-10", "checkpoint-20"]);
    prune_checkpoints(out.path(), 1).unwrap();
    assert_eq!(names(out.path()), ["checkpoint-20"]);
    assert!(prune_checkpoints(&out.path().join("absent"), 1).unwrap().is_empty());
}

#[test]
fn extra_files_travel_with_the_checkpoint_and_odd_names_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[(ROUTER_STATE_FILE, b"\x00router\xff")];
    let dir = write_checkpoint(out.path(), fake_adapter("r"), &optim(4), &state(4), files).unwrap();
    let c = load_checkpoint(&dir).unwrap();
    assert_eq!(c.read_file(ROUTER_STATE_FILE).unwrap().as_deref(), Some(&b"\x00router\xff"[..]));
    assert_eq!(c.read_file("absent.bin").unwrap(), None);
    // Saved again without it (a resumed run of the same step), the file goes with the old folder.
    save(out.path(), 4, "r");
    assert_eq!(load_checkpoint(&dir).unwrap().read_file(ROUTER_STATE_FILE).unwrap(), None);
    for name in ["", ".hidden", "a/b", OPTIMIZER_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE, CONFIG_FILE] {
        let files: &[(&str, &[u8])] = &[(name, b"x")];
        let e = write_checkpoint(out.path(), fake_adapter("r"), &optim(5), &state(5), files).unwrap_err();
        assert!(e.to_string().contains("cannot be an extra file"), "{name}: {e}");
    }
    assert!(!out.path().join("checkpoint-5").exists());
}
