//! Sentence embeddings across languages, with the engine embedded as a library: embeds the first
//! FLORES-200 sentences in several languages with multilingual-e5-small on the GPU and prints, for each
//! sentence, how similar it is to its own translation against the other sentences — the signal a
//! semantic reward is built on.
//!
//! Run (after `scripts/fetch_models.sh`):
//!   cargo run --release -p babelrl --example cross_lingual_similarity -- [LANG ...]
//! LANGs are FLORES codes (default `fra_Latn zho_Hans bod_Tibt`), compared with `eng_Latn`, read from
//! `$BABELRL_DATA/flores200/dev` (default `../shared/data`); without it, built-in demo sentences in
//! eng_Latn, fra_Latn, zho_Hans and spa_Latn.

use std::path::{Path, PathBuf};

use anyhow::Context;
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::model::{Encoder, cache_dir};

const SENTENCES: usize = 4;

/// Used when FLORES-200 is not at hand: four sentences of our own and their translations.
const DEMO: &[(&str, [&str; 4])] = &[
    (
        "eng_Latn",
        [
            "The train leaves at seven in the morning.",
            "My grandmother grows tomatoes in her garden.",
            "It rained all night, so the river is high.",
            "The library is closed on Sundays.",
        ],
    ),
    (
        "fra_Latn",
        [
            "Le train part à sept heures du matin.",
            "Ma grand-mère cultive des tomates dans son jardin.",
            "Il a plu toute la nuit, donc la rivière est haute.",
            "La bibliothèque est fermée le dimanche.",
        ],
    ),
    (
        "zho_Hans",
        [
            "火车早上七点出发。",
            "我的祖母在她的花园里种西红柿。",
            "下了一整夜的雨，所以河水很高。",
            "图书馆星期天关门。",
        ],
    ),
    (
        "spa_Latn",
        [
            "El tren sale a las siete de la mañana.",
            "Mi abuela cultiva tomates en su jardín.",
            "Llovió toda la noche, así que el río está alto.",
            "La biblioteca cierra los domingos.",
        ],
    ),
];

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = std::env::var_os("BABELRL_DATA").map_or_else(|| root.join("../shared/data"), PathBuf::from);
    let mut langs: Vec<String> = std::env::args().skip(1).collect();
    if langs.is_empty() {
        langs = ["fra_Latn", "zho_Hans", "bod_Tibt"].map(String::from).to_vec();
        if !data.join("flores200/dev").exists() {
            // The demo sentences' languages.
            langs = ["fra_Latn", "zho_Hans", "spa_Latn"].map(String::from).to_vec();
        }
    }
    let flores = data.join("flores200/dev");
    if !flores.exists() {
        println!(
            "({} not found: using the built-in demo sentences; set BABELRL_DATA for FLORES)",
            flores.display()
        );
    }
    let read = |lang: &str| -> anyhow::Result<Vec<String>> {
        if flores.exists() {
            let file = flores.join(format!("{lang}.dev"));
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            return Ok(text.lines().take(SENTENCES).map(String::from).collect());
        }
        let (_, lines) = DEMO.iter().find(|(l, _)| *l == lang).with_context(|| {
            let known: Vec<&str> = DEMO.iter().map(|(l, _)| *l).collect();
            format!("no demo sentences in {lang}: use one of {known:?}, or set BABELRL_DATA")
        })?;
        Ok(lines.iter().map(|s| s.to_string()).collect())
    };

    let dir = cache_dir().join("models/multilingual-e5-small");
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let encoder = Encoder::load(gpu, &dir)
        .with_context(|| format!("loading {} (run scripts/fetch_models.sh)", dir.display()))?;
    let english = encoder.embed(&read("eng_Latn")?)?;
    println!("adapter: {}; cosine similarity to the English sentences", encoder.gpu().summary.name);
    for lang in &langs {
        let other = encoder.embed(&read(lang)?)?;
        println!("\n{lang}: row i = sentence i, column j = English sentence j (the diagonal should win)");
        for (i, v) in other.iter().enumerate() {
            let row: Vec<String> = english.iter().map(|e| format!("{:.3}", dot(v, e))).collect();
            let best =
                (0..english.len()).max_by(|&a, &b| dot(v, &english[a]).total_cmp(&dot(v, &english[b])));
            println!("  {i}: {}  {}", row.join("  "), if best == Some(i) { "ok" } else { "MISMATCH" });
        }
    }
    Ok(())
}

/// Cosine similarity of two L2-normalised embeddings.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
