//! `babelrl plot`: two small metrics files overlaid give a valid PNG of the asked size with both files'
//! colours in it; nulls and nested keys are handled; a key no file has, and a bad line, are clear
//! errors that write no image.

use std::path::{Path, PathBuf};

use crate::common::{Scratch, scratch};
use crate::train_cli::{babelrl, err, ok};

fn temp(name: &str) -> Scratch {
    scratch(&format!("plot-{name}"))
}

/// A GRPO-like metrics file: reward rising at `rate`, `kl` null (β = 0), a nested per-plugin reward.
fn write_metrics(path: &Path, rate: f64) {
    let lines: Vec<String> = (1..=12)
        .map(|step| {
            let reward = rate * step as f64;
            serde_json::json!({
                "step": step, "loss": 1.0 / step as f64, "reward": reward, "kl": null,
                "rewards": {"length": reward / 2.0}, "completion_length": 20 + step, "note": "text",
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Width, height and RGB pixels of a PNG (8-bit RGB, as babelrl writes it).
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn count_colour(rgb: &[u8], colour: [u8; 3]) -> usize {
    rgb.chunks_exact(3).filter(|p| *p == colour).count()
}

#[test]
fn plot_overlays_files_into_a_png_of_the_asked_size() {
    let dir = temp("ok");
    let (lrpo, fixed) = (dir.join("lrpo.jsonl"), dir.join("fixed.jsonl"));
    write_metrics(&lrpo, 0.1);
    write_metrics(&fixed, 0.05);
    let out = dir.join("curves.png");
    let args = ["plot", lrpo.to_str().unwrap(), fixed.to_str().unwrap(), "-o", out.to_str().unwrap()];
    ok(&babelrl(&[&args[..], &["--width", "640", "--height", "480"]].concat(), &[]));
    let (w, h, rgb) = read_png(&out);
    assert_eq!((w, h), (640, 480));
    // Plotters' Palette99 colours 0 and 1 (one per file) are both drawn; the background is white.
    let (first, second) = ([230, 25, 75], [60, 180, 75]);
    assert!(count_colour(&rgb, first) > 50, "first file's line missing");
    assert!(count_colour(&rgb, second) > 50, "second file's line missing");
    assert!(count_colour(&rgb, [255, 255, 255]) > rgb.len() / 3 / 2, "mostly white background");
    // Nested keys, one panel.
    ok(&babelrl(
        &[&args[..], &["--keys", "rewards/length", "--width", "300", "--height", "200"]].concat(),
        &[],
    ));
    assert_eq!(read_png(&out).0, 300);
}

#[test]
fn plot_bad_keys_and_lines_are_errors_that_write_nothing() {
    let dir = temp("bad");
    let metrics = dir.join("metrics.jsonl");
    write_metrics(&metrics, 0.1);
    let out = dir.join("curves.png");
    let plot = |extra: &[&str]| {
        babelrl(&[&["plot", metrics.to_str().unwrap(), "-o", out.to_str().unwrap()][..], extra].concat(), &[])
    };
    let e = err(&plot(&["--keys", "reward,accuracy"]));
    assert!(
        e.contains("no numeric `accuracy` in")
            && e.contains("keys there: completion_length, loss, reward, rewards/length"),
        "{e}"
    );
    // `kl` is null on every line and `note` is text: neither is a curve.
    let e = err(&plot(&["--keys", "kl"]));
    assert!(e.contains("no numeric `kl`"), "{e}");
    assert!(err(&plot(&["--keys", "note"])).contains("no numeric `note`"));
    assert!(!out.exists(), "no image after an error");
    std::fs::write(&metrics, "{\"step\": 1, \"reward\": 0.5}\n{\"reward\": 0.7}\n").unwrap();
    let e = err(&plot(&[]));
    assert!(e.contains(&format!("{}: line 2: no numeric `step`", metrics.display())), "{e}");
    std::fs::write(&metrics, "{\"step\": 1, \"accuracy\": 0.5}\n").unwrap();
    let e = err(&plot(&[]));
    assert!(
        e.contains("none of the default keys (reward, loss, kl, completion_length)")
            && e.contains("accuracy"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn same_named_files_are_labelled_by_folder_and_nested_keys_flattened() {
    let dir = temp("labels");
    let paths: Vec<PathBuf> = ["lrpo", "fixed"].iter().map(|d| dir.join(d).join("metrics.jsonl")).collect();
    for p in &paths {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_metrics(p, 0.1);
    }
    let other = dir.join("other.jsonl");
    write_metrics(&other, 0.2);
    let files = babelrl::plot::read_all(&[paths[0].clone(), paths[1].clone(), other]).unwrap();
    let labels: Vec<&str> = files.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(labels, ["lrpo/metrics.jsonl", "fixed/metrics.jsonl", "other.jsonl"]);
    let f = &files[2];
    assert_eq!(f.points["rewards/length"][..2], [(1.0, 0.1), (2.0, 0.2)]);
    assert_eq!(f.points["completion_length"][0], (1.0, 21.0));
    assert!(!f.points.contains_key("kl") && !f.points.contains_key("note") && !f.points.contains_key("step"));
    assert_eq!(babelrl::plot::choose_keys(&files, None).unwrap(), ["reward", "loss", "completion_length"]);
}
