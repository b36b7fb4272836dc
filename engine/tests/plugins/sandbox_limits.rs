//! Sandbox limits against generated hostile components (issue 6, items 1, 2 and 6): tables count
//! against `memory_mib` across calls, a plugin's instances, tables and memories are capped, compile
//! bombs and oversized files are refused before compiling (library and CLI), and the cache of compiled
//! components refuses entries that were modified, moved from another component, or sit where others
//! can write.

mod bombs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use babelrl::plugin::{Capabilities, NoServices, PluginLimits, RewardPlugin, inspect};

use crate::common::{Scratch, scratch};
use crate::guest_builds::{guests, ordinary};

fn temp(name: &str) -> Scratch {
    scratch(&format!("limits-{name}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load(path: &Path, name: &str, limits: &PluginLimits) -> babelrl::Result<RewardPlugin> {
    RewardPlugin::load(path, name, "{}", limits, &Capabilities::default(), Arc::new(NoServices))
}

#[test]
fn tables_grown_across_calls_count_against_memory_mib() {
    // Each call grows a new table by 256 Ki elements (4 MiB as counted): 7 fit in 32 MiB with the
    // 256 KiB of linear memory, the 8th does not. Before tables were counted all 16 calls succeeded.
    let dir = temp("tables");
    let path = write(&dir, "tablebomb.wasm", &bombs::table_bomb(16, 1 << 18));
    let limits = PluginLimits { memory_mib: 32, ..Default::default() };
    let mut p = load(&path, "tablebomb", &limits).expect("load the table bomb");
    let group = ordinary();
    let mut failed = None;
    for call in 1..=16 {
        match p.score(&group) {
            Ok(scores) => assert_eq!(scores, vec![None; group.len()]),
            Err(e) => {
                failed = Some((call, e.to_string()));
                break;
            }
        }
    }
    let (call, err) = failed.expect("16 tables of 256 Ki elements grew under memory_mib = 32");
    eprintln!("call {call}: {err}");
    assert_eq!(call, 8, "{err}");
    assert!(err.starts_with("plugin `tablebomb`: score: "), "{err}");
    assert!(err.contains("exceeded the memory cap of 32 MiB"), "{err}");
    assert!(err.contains("tried to grow a table to 262144 elements"), "{err}");
    assert!(err.contains("memory_mib"), "{err}");
    // A fresh instance (new store, empty account) serves the next call.
    assert_eq!(p.score(&group).expect("a call after the restart"), vec![None; group.len()]);
    assert_eq!(p.restarts(), 1);
}

#[test]
fn a_plugin_may_create_only_so_many_instances_tables_and_memories() {
    let dir = temp("counts");
    let limits = PluginLimits::default();
    let base = bombs::table_bomb(1, 1);
    // The plain component instantiates and runs (the extra module, instantiated a few times, is fine).
    let fine = write(&dir, "fine.wasm", &bombs::with_instances(base.clone(), 10, 1, 1));
    let mut p = load(&fine, "fine", &limits).expect("a component with 10 extra instances");
    p.score(&ordinary()).expect("score");
    for (name, count, tables, memories, needle) in [
        ("instances", 150, 0, 0, "instance count too high"),
        ("tables", 3, 50, 0, "table count too high"),
        ("memories", 20, 0, 1, "memory count too high"),
    ] {
        let path = write(
            &dir,
            &format!("{name}.wasm"),
            &bombs::with_instances(base.clone(), count, tables, memories),
        );
        let err = load(&path, name, &limits).err().unwrap_or_else(|| panic!("{name}: loaded")).to_string();
        eprintln!("{name}: {err}");
        assert!(err.starts_with(&format!("plugin `{name}`: instantiation: ")), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("at most 100 instances, 100 tables and 16 memories"), "{err}");
    }
}

/// Loads `bytes` with the library (`inspect`) and expects a refusal naming the file and `needle`, in
/// well under a second (it must come from the check before compiling, not from the compiler).
fn refused_before_compiling(name: &str, bytes: &[u8], limits: &PluginLimits, needle: &str) -> String {
    let dir = temp(name);
    let path = write(&dir, &format!("{name}.wasm"), bytes);
    let t0 = Instant::now();
    let err = inspect(&path, limits).err().unwrap_or_else(|| panic!("{name}: compiled")).to_string();
    let took = t0.elapsed();
    eprintln!("{name} ({} bytes, {took:?}): {err}", bytes.len());
    assert!(err.starts_with(&format!("plugin `{name}`: ")), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(took < Duration::from_secs(2), "{name}: the refusal took {took:?}");
    err
}

#[test]
fn compile_bombs_are_refused_before_compiling() {
    let limits = PluginLimits::default();
    // 40,000 locals (under wasmparser's 50,000) read after 40,000 blocks: before the check, compiling
    // this 0.3 MB file would take about 6 GB (see docs/plugins-host.md).
    refused_before_compiling(
        "locals",
        &bombs::locals_bomb(40_000, 40_000),
        &limits,
        "a function's number of locals (40000) exceeds the limit of 10000 checked before compiling",
    );
    // 5,000 locals (under the limit) read after 20,000 blocks: 0.4 GB to compile before the check.
    refused_before_compiling(
        "product",
        &bombs::locals_bomb(5_000, 20_000),
        &limits,
        "a function's locals × body bytes (5000 × ",
    );
    // 349,000 empty blocks and 32 locals in a 1 MB function: over 200 s to compile before the check.
    refused_before_compiling(
        "blocks",
        &bombs::locals_bomb(32, 349_000),
        &limits,
        "a function's number of blocks, loops and ifs (349000) exceeds the limit of 10000",
    );
    refused_before_compiling(
        "functions",
        &bombs::many_functions(250_000),
        &limits,
        "its number of functions (250000) exceeds the limit of 200000",
    );
}

#[test]
fn component_files_over_max_component_mib_are_refused_unread() {
    let limits = PluginLimits { max_component_mib: 1, ..Default::default() };
    let big = bombs::padded(bombs::many_functions(1), 1 << 21);
    refused_before_compiling(
        "big",
        &big,
        &limits,
        "over the cap of 1 MiB on component files (max_component_mib)",
    );
    // The same file under the default cap is a valid (if useless) component.
    let dir = temp("big-ok");
    let path = write(&dir, "big.wasm", &big);
    let (world, _) =
        inspect(&path, &PluginLimits::default()).expect("a 2 MiB component under the default cap");
    assert_eq!(world, None);
}

fn babelrl(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_babelrl"))
        .args(args)
        .env("BABELRL_CACHE", cache)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the babelrl binary")
}

#[test]
fn the_cli_refuses_a_compile_bomb_without_aborting() {
    let dir = temp("cli-bomb");
    let path = write(&dir, "bomb.wasm", &bombs::locals_bomb(40_000, 40_000));
    let t0 = Instant::now();
    let out = babelrl(&["plugin", "check", path.to_str().unwrap()], &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plugin `bomb`: "), "{stderr}");
    assert!(stderr.contains("exceeds the limit of 10000 checked before compiling"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
}

/// The cache entry files in `cache/plugins`, by name.
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("plugins"))
        .map(|d| {
            d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn world_of(check: &Output) -> String {
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check failed: {}", String::from_utf8_lossy(&check.stderr));
    stdout.lines().find(|l| l.starts_with("world")).unwrap_or_default().to_string()
}

#[test]
fn cache_entries_from_another_component_or_modified_are_not_loaded() {
    let Some(g) = guests() else { return };
    let cache = temp("cache");
    let (reward, router) = (g.reward.to_str().unwrap(), g.router.to_str().unwrap());
    assert!(
        world_of(&babelrl(&["plugin", "check", reward, "--config", r#"{"scale": 2}"#], &cache))
            .ends_with("reward")
    );
    let reward_entry = entries(&cache).pop().expect("the reward plugin's cache entry");
    assert!(world_of(&babelrl(&["plugin", "check", router], &cache)).ends_with("router"));
    let router_entry = entries(&cache).into_iter().find(|e| *e != reward_entry).expect("the router's entry");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache.join("plugins")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    }
    let original = std::fs::read(&reward_entry).unwrap();

    // The router's entry under the reward plugin's name: not used, the reward plugin is recompiled.
    std::fs::copy(&router_entry, &reward_entry).unwrap();
    let out = babelrl(&["plugin", "check", reward, "--config", r#"{"scale": 2}"#], &cache);
    assert!(world_of(&out).ends_with("reward"), "loaded another component's cache entry");
    assert_eq!(std::fs::read(&reward_entry).unwrap(), original, "the entry was rewritten");

    // One byte appended: not loaded, recompiled and rewritten.
    let mut tampered = original.clone();
    tampered.push(0);
    std::fs::write(&reward_entry, &tampered).unwrap();
    let out = babelrl(&["plugin", "check", reward, "--config", r#"{"scale": 2}"#], &cache);
    assert!(world_of(&out).ends_with("reward"));
    assert_eq!(std::fs::read(&reward_entry).unwrap(), original, "a modified entry was loaded");
}

/// An entry for the reward plugin's key holding the router's compiled code, with a correct digest:
/// what someone able to write the cache directory could plant (the layout is documented).
fn forge(reward_entry: &[u8], router_entry: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let magic = b"babelrl-plugin-cache-v1\n".len();
    let artifact = &router_entry[magic + 64..];
    let mut out = reward_entry[..magic + 32].to_vec();
    out.extend_from_slice(&Sha256::digest(artifact));
    out.extend_from_slice(artifact);
    out
}

#[cfg(unix)]
#[test]
fn a_cache_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let Some(g) = guests() else { return };
    let cache = temp("cache-open");
    let (reward, router) = (g.reward.to_str().unwrap(), g.router.to_str().unwrap());
    world_of(&babelrl(&["plugin", "check", reward], &cache));
    let reward_entry = entries(&cache).pop().expect("the reward plugin's cache entry");
    world_of(&babelrl(&["plugin", "check", router], &cache));
    let router_entry = entries(&cache).into_iter().find(|e| *e != reward_entry).expect("the router's entry");
    let forged = forge(&std::fs::read(&reward_entry).unwrap(), &std::fs::read(&router_entry).unwrap());
    std::fs::write(&reward_entry, &forged).unwrap();
    // In the private directory the entry is trusted like the engine binary: the forgery loads. (This
    // checks the forgery is well made; only the user running the engine can write there.)
    let planted = world_of(&babelrl(&["plugin", "check", reward], &cache));
    assert!(planted.ends_with("router"), "{planted}");
    // Once others may write the directory, no entry in it is trusted.
    std::fs::set_permissions(cache.join("plugins"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = babelrl(&["plugin", "check", reward], &cache);
    assert!(world_of(&out).ends_with("reward"), "used an entry from a directory anyone may write");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by group or others"), "no warning: {stderr}");
}

/// Not a test: writes the generated bombs to `$BABELRL_WRITE_BOMBS` (to time `babelrl plugin check` on
/// them by hand) and prints the shape of the components listed in `$BABELRL_SHAPES` (colon-separated),
/// the figures behind the limits in docs/plugins-host.md. Run with `-- --ignored measure`.
#[test]
#[ignore = "measurement, not a check: prints the compile cost of the bombs and the shapes of the example plugins"]
fn measure_bombs_and_shapes() {
    if let Some(dir) = std::env::var_os("BABELRL_WRITE_BOMBS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (locals, blocks) in [
            (2_000, 20_000),
            (10_000, 20_000),
            (40_000, 40_000),
            (32, 40_000),
            (1_000, 9_800),
            (300, 37_000),
            (0, 40_000),
            (32, 10_000),
            (1_000, 9_800),
        ] {
            write(&dir, &format!("locals-{locals}-{blocks}.wasm"), &bombs::locals_bomb(locals, blocks));
        }
        for n in [10_000, 100_000, 200_000] {
            write(&dir, &format!("functions-{n}.wasm"), &bombs::many_functions(n));
        }
        for (n, blocks) in [(1, 10_000), (100, 10_000), (10, 10_000)] {
            write(&dir, &format!("blocky-{n}-{blocks}.wasm"), &bombs::blocky_functions(n, blocks));
        }
    }
    for path in std::env::var("BABELRL_SHAPES").unwrap_or_default().split(':').filter(|p| !p.is_empty()) {
        let bytes = std::fs::read(path).unwrap();
        let (mut functions, mut body, mut locals, mut product, mut modules) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut blocks, mut all_blocks) = (0u64, 0u64);
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            match payload.unwrap() {
                wasmparser::Payload::ModuleSection { .. } => modules += 1,
                wasmparser::Payload::FunctionSection(r) => functions += u64::from(r.count()),
                wasmparser::Payload::CodeSectionEntry(b) => {
                    let size = b.range().len() as u64;
                    let l: u64 =
                        b.get_locals_reader().unwrap().into_iter().map(|d| u64::from(d.unwrap().0)).sum();
                    body = body.max(size);
                    locals = locals.max(l);
                    product = product.max(size * l);
                    let mut ops = b.get_operators_reader().unwrap();
                    let mut n = 0u64;
                    while !ops.eof() {
                        use wasmparser::Operator::{Block, If, Loop, TryTable};
                        n += u64::from(matches!(
                            ops.read().unwrap(),
                            Block { .. } | Loop { .. } | If { .. } | TryTable { .. }
                        ));
                    }
                    blocks = blocks.max(n);
                    all_blocks += n;
                }
                _ => {}
            }
        }
        println!(
            "{path}: {} bytes, {modules} modules, {functions} functions, largest body {body} bytes, most locals {locals}, largest locals × body {product}, most blocks {blocks}, blocks in all {all_blocks}",
            bytes.len()
        );
    }
}
