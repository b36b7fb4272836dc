//! `babelrl plot METRICS.jsonl [MORE.jsonl …] -o curves.png`: learning curves, one panel per key, the
//! files overlaid (`babelrl::plot`).

use std::path::PathBuf;

use anyhow::Context;
use babelrl::plot::{choose_keys, plot_curves, read_all};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Metrics JSONL files (a run's metrics.jsonl); several are overlaid, one colour each.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Comma-separated keys, one panel each (nested ones as `rewards/NAME`). Default: those of reward,
    /// loss, kl, completion_length the files have.
    #[arg(long, value_delimiter = ',')]
    keys: Option<Vec<String>>,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800)]
    height: u32,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let files = read_all(&args.files)?;
    let keys: Option<Vec<String>> =
        args.keys.map(|k| k.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    let keys = choose_keys(&files, keys.as_deref())?;
    plot_curves(&files, &keys, &args.output, (args.width, args.height))
        .with_context(|| format!("plotting {}", keys.join(", ")))?;
    eprintln!("wrote {} ({})", args.output.display(), keys.join(", "));
    Ok(())
}
