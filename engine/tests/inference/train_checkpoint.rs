//! Checkpoints with a real adapter on the GPU: `save_checkpoint` writes a PEFT folder that
//! `Adapter::load_peft` reads back bit for bit beside the optimizer and trainer state, and a resumed
//! run saving the same step replaces it (the file-level cases are unit tests in
//! engine/src/train/checkpoint/tests.rs). Run: `cargo test -p babelrl --test inference train_checkpoint::`.

use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::DecoderConfig;
use babelrl::train::{
    AdamWState, CHECKPOINT_FORMAT, ParamState, Schedule, SchedulerType, TrainerState, latest_checkpoint,
    load_checkpoint, prune_checkpoints, save_checkpoint,
};

use crate::common::{gpu, random, repo_root};

fn bits(a: &Adapter) -> Vec<Vec<u32>> {
    a.to_host()
        .unwrap()
        .iter()
        .flat_map(|p| [&p.a, &p.b])
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_checkpoint_holds_the_adapter_optimizer_and_state() {
    let model =
        DecoderConfig::from_hf_file(&repo_root().join("tests/fixtures/tiny-qwen2/config.json")).unwrap();
    let mut cfg = LoraConfig::new(4, 8.0, &[Target::Q, Target::V, Target::Down]).unwrap();
    cfg.use_rslora = true;
    let fresh = Adapter::init(gpu(), cfg.clone(), &model, 5).unwrap();
    // Non-zero B, as after some training.
    let mut host = fresh.to_host().unwrap();
    for (i, p) in host.iter_mut().enumerate() {
        p.b = random(p.b.len(), 0.1, i as u64);
    }
    let adapter = Adapter::from_host(gpu(), cfg.clone(), &model, &host).unwrap();
    let optim = AdamWState {
        step: 12,
        params: host
            .iter()
            .map(|p| ParamState {
                name: format!("{}.{:?}.A", p.layer, p.target),
                exp_avg: random(p.a.len(), 1e-3, 100 + p.layer as u64),
                exp_avg_sq: random(p.a.len(), 1e-6, 200 + p.layer as u64).iter().map(|x| x.abs()).collect(),
            })
            .collect(),
    };
    let state = |step: u64| TrainerState {
        format: CHECKPOINT_FORMAT.into(),
        step,
        schedule: Schedule::new(SchedulerType::Linear, 2.0, 40).unwrap(),
        seed: 5,
        data_seed: 6,
        examples_seen: 96,
        epoch: 1,
        run_file_sha256: "0".repeat(64),
        base_model: "tiny-qwen2".into(),
        stage: None,
        stages: Vec::new(),
        metrics: serde_json::Map::new(),
    };
    let out = tempfile::tempdir().unwrap();
    let dir = save_checkpoint(out.path(), &adapter, &optim, &state(12)).unwrap();
    assert_eq!(latest_checkpoint(out.path()).unwrap(), Some(dir.clone()));
    let ck = load_checkpoint(&dir).unwrap();
    assert_eq!((ck.state, ck.optimizer), (state(12), optim.clone()));
    let back = Adapter::load_peft(gpu(), &ck.adapter_dir, &model).unwrap();
    assert_eq!(back.config().targets, cfg.targets);
    assert!(back.config().use_rslora);
    assert_eq!(bits(&back), bits(&adapter), "adapter values after a checkpoint round trip");

    // A resumed run saves step 12 again, with the fresh adapter: the checkpoint now holds that one.
    save_checkpoint(out.path(), &fresh, &optim, &state(12)).unwrap();
    let again = Adapter::load_peft(gpu(), &dir, &model).unwrap();
    assert_eq!(bits(&again), bits(&fresh));
    let names: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["checkpoint-12"], "nothing else is left in the output folder");
    assert!(prune_checkpoints(out.path(), 1).unwrap().is_empty());
}
