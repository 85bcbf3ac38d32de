//! What a tasks worker of the local deployment needs: a job-runner configuration pointing at
//! the forge (the mock GitHub, or the real one) and the in-process S3 store, with Cockpit's
//! keys and token files.

use std::path::{Path, PathBuf};

use crate::{MockGitHub, S3Server, Secrets};

/// The GitHub the workers talk to.
#[derive(Debug, Clone)]
pub struct Forge {
    pub api_url: String,
    pub clone_url: String,
    pub token_file: PathBuf,
}

impl Forge {
    /// The mock, with the token of the generated secrets.
    pub fn mock(github: &MockGitHub, secrets: &Secrets) -> Forge {
        Forge { api_url: github.api_url(), clone_url: github.clone_url(), token_file: secrets.github_token() }
    }

    /// github.com, with a real token (run-local's real GitHub mode).
    pub fn github(token_file: &Path) -> Forge {
        Forge {
            api_url: github::DEFAULT_API.to_owned(),
            clone_url: "https://github.com/".to_owned(),
            token_file: token_file.to_owned(),
        }
    }
}

/// Writes `job-runner.toml` into `dir` for jobs in `sandbox` ("process" or "container", the
/// latter through the podman API at `podman_socket`); returns its path.
pub fn write_runner_config(
    dir: &Path,
    forge: &Forge,
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
        api = forge.api_url,
        clone = forge.clone_url,
        token = forge.token_file.display(),
    );
    if let Some(socket) = podman_socket {
        toml.push_str(&format!("command = [\"podman-remote\", \"--url=unix://{}\"]\n", socket.display()));
    }
    let path = dir.join("job-runner.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}
