//! What a tasks worker of the local deployment needs: a job-runner configuration pointing at
//! the mock GitHub and the in-process S3 store, with Cockpit's keys and token files.

use std::path::{Path, PathBuf};

use crate::{MockGitHub, S3Server, Secrets};

/// Writes `job-runner.toml` into `dir` for jobs in `sandbox` ("process" or "container", the
/// latter through the podman API at `podman_socket`); returns its path.
pub fn write_runner_config(
    dir: &Path,
    github: &MockGitHub,
    s3: &S3Server,
    secrets: &Secrets,
    sandbox: &str,
    podman_socket: Option<&Path>,
) -> std::io::Result<PathBuf> {
    let mut toml = format!(
        r#"[logs]
driver = "s3"
[logs.s3]
url = "{s3}logs"
key = [{{file = "{keys}/localhost"}}]
ca = [{{file = "{ca}"}}]
[forge.github]
api-url = "{api}"
clone-url = "{clone}"
post = true
token = [{{file = "{token}"}}]
[container]
sandbox = "{sandbox}"
"#,
        s3 = s3.url(),
        keys = secrets.s3_keys_dir().display(),
        ca = secrets.ca_cert().display(),
        api = github.api_url(),
        clone = github.clone_url(),
        token = secrets.github_token().display(),
    );
    if let Some(socket) = podman_socket {
        toml.push_str(&format!("command = [\"podman-remote\", \"--url=unix://{}\"]\n", socket.display()));
    }
    let path = dir.join("job-runner.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}
