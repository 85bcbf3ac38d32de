//! A job-runner configuration (JSON if it starts with `{`, else TOML) merged over the
//! defaults, file indirections answered without touching the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasks::runner_config::{Format, RunnerConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let format = if text.trim_start().starts_with('{') { Format::Json } else { Format::Toml };
    let _ = RunnerConfig::parse(text, format, |file| Ok(format!("content of {file}")));
});
