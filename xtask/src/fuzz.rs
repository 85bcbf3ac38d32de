//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets of `fuzz/`, each run for a bounded
//! time from seeds made of the fixtures, on the stable toolchain (no sanitizer). A panic, a
//! timeout or memory past the limit fails the run and names the input that did it. `ci` runs
//! a short smoke of each target.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::packages::{self, CXX};
use crate::progress::Spinner;

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 4] = ["webhook_delivery", "job_message", "test_map", "runner_config"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// libFuzzer's limits: memory (MB) and time per input (s).
const RSS_LIMIT_MB: u32 = 1024;
const INPUT_TIMEOUT: u32 = 10;

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// The targets to run [default: all].
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    packages::ensure(&[CXX])?;
    let cargo_fuzz = install()?;
    let fuzz_dir = crate::workspace::root().join("fuzz");
    let target_dir = crate::workspace::tools_dir().join("fuzz-target");
    let fuzz = |verb: &str| {
        let mut command = crate::workspace::cargo();
        command
            .arg("fuzz")
            .arg(verb)
            .env("PATH", path_with(cargo_fuzz.parent().expect("a binary lives in a directory")))
            .current_dir(&fuzz_dir);
        command
    };
    let spinner = Spinner::start("building the fuzz targets (instrumented, release)");
    let built = fuzz("build").args(["--sanitizer", "none", "--release", "--target-dir"]).arg(&target_dir).output();
    let built = built.context("running cargo fuzz build")?;
    spinner.finish(built.status.success());
    if !built.status.success() {
        bail!("building the fuzz targets failed:\n{}", String::from_utf8_lossy(&built.stderr));
    }
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    for target in targets {
        let seeds = seeds(target)?;
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let spinner = Spinner::start(&format!("fuzzing {target} for {} s", args.seconds));
        let output = fuzz("run")
            .args(["--sanitizer", "none", "--release", "--target-dir"])
            .arg(&target_dir)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-timeout={INPUT_TIMEOUT}"))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        spinner.finish(output.status.success());
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed; the input is in fuzz/artifacts/{target}/ (run it again with \
                 `cargo fuzz run --sanitizer none {target} <input>` in fuzz/):\n{}",
                tail.join("\n")
            );
        }
        let stat = |name: &str| {
            log.lines().find_map(|line| line.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_owned()))
        };
        println!(
            "{target}: {} inputs in {} s, corpus of {}, peak memory {} MB, no crash",
            stat("number_of_executed_units").unwrap_or_else(|| "?".into()),
            args.seconds,
            std::fs::read_dir(&corpus).map_or(0, |entries| entries.count()),
            stat("peak_rss_mb").unwrap_or_else(|| "?".into()),
        );
    }
    Ok(())
}

/// cargo-fuzz, installed once into the target directory at a pinned version.
fn install() -> anyhow::Result<PathBuf> {
    let root = crate::workspace::tools_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let binary = root.join("bin/cargo-fuzz");
    if binary.exists() {
        return Ok(binary);
    }
    let spinner = Spinner::start(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)"));
    let output = crate::workspace::cargo()
        .args(["install", "--quiet", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--root"])
        .arg(&root)
        .output()
        .context("running cargo install cargo-fuzz")?;
    spinner.finish(output.status.success());
    if !output.status.success() {
        bail!(
            "installing cargo-fuzz failed (it needs crates.io and a C++ compiler):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(binary)
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_owned()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).expect("PATH entries join")
}

/// A fresh directory of seed inputs for `target`: the fixtures it would meet in a run, and
/// the seeds kept in `fuzz/seeds/<target>/`.
fn seeds(target: &str) -> anyhow::Result<PathBuf> {
    let root = crate::workspace::root();
    let dir = crate::workspace::tools_dir().join("fuzz-seeds").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).with_context(|| format!("writing a seed to {}", dir.display()))
    };
    match target {
        "webhook_delivery" => {
            // The first line is the event header: the payload's file name says which.
            let payloads = root.join("fixtures/payloads");
            for entry in std::fs::read_dir(&payloads).with_context(|| format!("reading {}", payloads.display()))? {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let event = name.split(['-', '.']).next().unwrap_or_default();
                let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                write(&name, &[event.as_bytes(), b"\n", &body].concat())?;
                write(&format!("forged-{name}"), &[b"!", event.as_bytes(), b"\n", &body].concat())?;
            }
        }
        "test_map" => {
            write("testmap.toml", &std::fs::read(root.join("fixtures/testmap.toml")).context("reading the test map")?)?
        }
        _ => {}
    }
    let kept = root.join("fuzz/seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(&kept) {
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            write(&name, &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
        }
    }
    Ok(dir)
}
