//! The `babelrl` command line: adapters, generation, embeddings, benchmarks and plugin tools.

mod bench;
mod bench_grpo;
mod bench_pref;
mod bench_train;
mod eval_cmd;
mod eval_reward;
mod generate_cmd;
mod info;
mod plot_cmd;
mod plugin_cmd;
mod train_cmd;
mod train_dpo;
mod train_grpo;
mod train_lrpo;
mod train_reward;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// babelrl: train and run language models on any GPU (or a CPU through lavapipe), with sandboxed
/// WebAssembly reward plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List adapters, their features and limits, and the one babelrl picks.
    Info,
    /// Generate text, streaming tokens to stdout.
    Generate(generate_cmd::GenerateArgs),
    /// Print sentence embeddings (one JSON array per input line).
    Embed(generate_cmd::EmbedArgs),
    /// Train a LoRA adapter from a run file (an [sft], [grpo] or [dpo] job, or SFT then GRPO or DPO).
    Train(train_cmd::TrainArgs),
    /// Score the base model and LoRA adapters on held-out data (chrF, BLEU, semantic similarity,
    /// language consistency, exact match).
    Eval(eval_cmd::EvalArgs),
    /// Draw learning curves from metrics JSONL files into a PNG.
    Plot(plot_cmd::PlotArgs),
    /// Measure prefill and decode tokens/s and GEMM GFLOP/s on the model's shapes.
    Bench(bench::BenchArgs),
    /// Check and run reward and router plugins.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCmd),
}

/// The default model: SmolLM2-135M-Instruct as fetched by scripts/fetch_models.sh.
pub fn default_model() -> PathBuf {
    babelrl::model::cache_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info::run(),
        Command::Generate(args) => generate_cmd::run(args),
        Command::Embed(args) => generate_cmd::embed(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Plot(args) => plot_cmd::run(args),
        Command::Plugin(cmd) => plugin_cmd::run(cmd),
    };
    if let Err(e) = result {
        // Errors quote file names and model metadata (plugin text is escaped where it enters an error):
        // keep their line breaks (GPU validation errors span lines) but no other control character.
        let message = format!("{e:#}");
        let lines: Vec<_> = message.split('\n').map(babelrl::plugin::text::sanitize).collect();
        eprintln!("error: {}", lines.join("\n"));
        std::process::exit(1);
    }
}
