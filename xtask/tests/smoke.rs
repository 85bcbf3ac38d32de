//! `cargo xtask smoke` refuses an image that lacks what a tasks container needs, naming it,
//! before it starts anything. (`cargo xtask ci` runs the passing case on the image it built.)

use std::path::Path;
use std::process::Command;

#[cfg_attr(not(ci), ignore = "needs podman: cargo xtask ci installs it and runs this")]
#[test]
fn an_image_without_the_service_binaries_is_refused_saying_what_it_lacks() {
    assert!(Path::new("/usr/bin/podman").exists(), "podman is not installed: cargo xtask ci installs it");
    // The Debian base image: a fine system, without our binaries or git.
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["smoke", "--tasks-image", "localhost/workbench/base"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "localhost/workbench/base is not a deployable tasks image: no tasks command on its PATH; \
             no webhook command on its PATH; no git command on its PATH"
        ),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("scenario"), "nothing ran: {stdout}");
}
