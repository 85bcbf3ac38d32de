//! Sets `cfg(ci)` when built with `CI=true`. Tests that need a tool this machine may lack
//! (podman, tmux) are ignored without it, so that the test runner reports them as skipped; in
//! CI they run, and a missing tool fails them by name. `cargo xtask ci` installs the tools and
//! runs the ignored tests too. (xtask's manifest points at this file as well.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ci)");
    println!("cargo::rerun-if-env-changed=CI");
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        println!("cargo::rustc-cfg=ci");
    }
}
