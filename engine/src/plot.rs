//! Learning curves from metrics JSONL files (`babelrl plot`): one panel per key, x = `step`, one line
//! per file, drawn with plotters into a PNG. Text uses DejaVu Sans embedded in the binary, so no system
//! font is needed.
//!
//! Each line of a metrics file is a JSON object with a numeric `step`; nested objects are flattened
//! with `/` (`{"rewards": {"length": 0.5}}` gives the key `rewards/length`). Values that are not finite
//! numbers (`null`, strings, NaN) are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

use crate::plugin::read_jsonl;
use crate::{Error, Result};

/// Keys plotted when none are asked for (those present in at least one file).
pub const DEFAULT_KEYS: [&str; 4] = ["reward", "loss", "kl", "completion_length"];

/// The curves of one metrics file: key → (step, value) points, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// The legend entry (the file's name).
    pub label: String,
    pub path: PathBuf,
    pub points: BTreeMap<String, Vec<(f64, f64)>>,
}

fn flatten(prefix: &str, value: &Value, step: f64, out: &mut BTreeMap<String, Vec<(f64, f64)>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                flatten(&key, v, step, out);
            }
        }
        Value::Number(n) => {
            if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                out.entry(prefix.to_string()).or_default().push((step, v));
            }
        }
        _ => {}
    }
}

/// Reads a metrics JSONL file. A line that is not an object or has no numeric `step` is an error naming
/// the file and line.
pub fn read_metrics(path: &Path) -> Result<Curves> {
    let mut points = BTreeMap::new();
    for (line, row) in read_jsonl(path)? {
        let bad = |m: &str| Error::format(path, format!("line {line}: {m}"));
        let obj = row.as_object().ok_or_else(|| bad("a metrics line must be a JSON object"))?;
        let step = obj
            .get("step")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no numeric `step` (metrics lines are {\"step\": N, \"loss\": …})"))?;
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "step") {
            flatten(k, v, step, &mut points);
        }
    }
    let label =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Curves { label, path: path.to_path_buf(), points })
}

/// Reads several metrics files ([`read_metrics`]); files with the same name (`out-a/metrics.jsonl`,
/// `out-b/metrics.jsonl`) are labelled with their folder too, or by their whole path if that is not
/// enough.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Curves>> {
    let mut files = paths.iter().map(|p| read_metrics(p)).collect::<Result<Vec<_>>>()?;
    let clash = |files: &[Curves], i: usize| files.iter().filter(|f| f.label == files[i].label).count() > 1;
    for pass in 0..2 {
        let clashing: Vec<usize> = (0..files.len()).filter(|&i| clash(&files, i)).collect();
        for i in clashing {
            let path = &files[i].path;
            files[i].label = match (pass, path.parent().and_then(Path::file_name)) {
                (0, Some(dir)) => format!("{}/{}", dir.to_string_lossy(), files[i].label),
                _ => path.display().to_string(),
            };
        }
    }
    Ok(files)
}

/// The keys to plot: `requested` (each must have a value in at least one file), else those of
/// [`DEFAULT_KEYS`] some file has.
pub fn choose_keys(files: &[Curves], requested: Option<&[String]>) -> Result<Vec<String>> {
    let has = |key: &str| files.iter().any(|f| f.points.get(key).is_some_and(|p| !p.is_empty()));
    let available = || {
        let mut all: Vec<&str> = files.iter().flat_map(|f| f.points.keys().map(String::as_str)).collect();
        all.sort_unstable();
        all.dedup();
        if all.is_empty() { "none".to_string() } else { all.join(", ") }
    };
    let names = || files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ");
    match requested {
        Some(keys) => {
            if keys.is_empty() {
                return Err(Error::Input("--keys is empty: name one or more metrics".into()));
            }
            if let Some(missing) = keys.iter().find(|k| !has(k)) {
                return Err(Error::Input(format!(
                    "no numeric `{missing}` in {}; keys there: {}",
                    names(),
                    available()
                )));
            }
            Ok(keys.to_vec())
        }
        None => {
            let keys: Vec<String> = DEFAULT_KEYS.iter().filter(|k| has(k)).map(|k| k.to_string()).collect();
            if keys.is_empty() {
                return Err(Error::Input(format!(
                    "none of the default keys ({}) in {}; choose with --keys from: {}",
                    DEFAULT_KEYS.join(", "),
                    names(),
                    available()
                )));
            }
            Ok(keys)
        }
    }
}

/// The range of `values` with a 5 % margin (a unit one around a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn plot_error(out: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(out, format!("drawing the plot failed: {e}"))
}

/// Draws one panel per key of `keys` (a grid of up to 2 columns), each file of `files` as a line in
/// its own colour with a legend, into a `width` × `height` PNG at `out`.
pub fn plot_curves(files: &[Curves], keys: &[String], out: &Path, (width, height): (u32, u32)) -> Result<()> {
    if files.is_empty() || keys.is_empty() {
        return Err(Error::Input("nothing to plot: give at least one metrics file and one key".into()));
    }
    if !(64..=16_384).contains(&width) || !(64..=16_384).contains(&height) {
        return Err(Error::Input(format!(
            "image size {width}x{height}: each side must be 64 to 16384 pixels"
        )));
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| Error::Input("the embedded DejaVu Sans font failed to load".into()))?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(out, e))?;
        let cols = if keys.len() == 1 { 1 } else { 2 };
        let rows = keys.len().div_ceil(cols);
        let panels = root.split_evenly((rows, cols));
        for (key, panel) in keys.iter().zip(&panels) {
            draw_panel(files, key, panel).map_err(|e| plot_error(out, e))?;
        }
        root.present().map_err(|e| plot_error(out, e))?;
    }
    write_png(out, &rgb, width, height)
}

type Panel<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(files: &[Curves], key: &str, panel: &Panel<'_>) -> std::result::Result<(), String> {
    let all = || files.iter().filter_map(|f| f.points.get(key)).flatten();
    let (x0, x1) = padded_range(all().map(|p| p.0));
    let (y0, y1) = padded_range(all().map(|p| p.1));
    let mut chart = ChartBuilder::on(panel)
        .caption(key, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x}") })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, file) in files.iter().enumerate() {
        let Some(points) = file.points.get(key) else { continue };
        // Colour by file, so a file keeps its colour in every panel.
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(2))
            .map_err(|e| e.to_string())?
            .label(file.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    // The legend goes in the upper corner unless the curves end high, then in the lower one.
    let last = files.iter().filter_map(|f| f.points.get(key)?.last()).map(|p| p.1);
    let (sum, n) = last.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    let ends_high = n > 0 && sum / n as f64 > (y0 + y1) / 2.0;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(if ends_high { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes an RGB8 buffer as a PNG (through a temporary file, so a failed write leaves no half image).
fn write_png(out: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let tmp = out.with_extension("png.tmp");
    let encode = || -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    };
    if let Err(e) = encode() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::format(out, format!("writing the PNG failed: {e}")));
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}
