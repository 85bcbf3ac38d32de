//! A test map (TOML) as tests-scan loads it, then asked what it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(map) = tasks::testmap::TestMap::parse(text) {
        for repo in map.projects() {
            for context in map.contexts(repo, map.default_branch(repo)) {
                let _ = map.is_valid_context(&context, repo);
            }
        }
    }
});
