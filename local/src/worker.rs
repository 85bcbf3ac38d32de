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

    /// Whether this is `github`, the mock (as this machine reaches it), rather than the real one.
    pub fn is_mock(&self, github: &MockGitHub) -> bool {
        self.api_url == github.api_url()
    }

    /// The mock as the hosts of the hosts runtime reach it (`crate::hosts`): on the services
    /// host.
    pub fn mock_on_hosts(github: &MockGitHub, secrets: &Secrets) -> Forge {
        Forge {
            api_url: crate::hosts::seen_from_hosts(&github.api_url()),
            clone_url: crate::hosts::seen_from_hosts(&github.clone_url()),
            token_file: secrets.github_token(),
        }
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

/// Where a worker runs its jobs.
#[derive(Debug, Clone, Copy)]
pub enum Sandbox<'a> {
    Process,
    /// A container per job through the podman API at `socket`, from `image` unless the job
    /// names another, with these extra `podman run` arguments (Cockpit's `run-args`).
    Container {
        socket: &'a Path,
        image: &'a str,
        run_args: &'a [String],
    },
}

/// A job-runner configuration, as the worker that reads it sees the world.
pub struct RunnerConfig<'a> {
    pub forge: &'a Forge,
    /// The S3 store's URL.
    pub s3_url: String,
    /// Cockpit's `proxy_url`: where people read the logs (status links), when that differs
    /// from where the worker writes them.
    pub logs_link: Option<String>,
    /// Where the worker finds host names its resolver does not know (the S3 store's).
    pub s3_hosts: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// The secrets, at the paths the worker reads them from.
    pub secrets: &'a Secrets,
    pub sandbox: Sandbox<'a>,
    /// Keep the first job whose tests fail (`tasks::hold`).
    pub hold_failed: bool,
}

impl<'a> RunnerConfig<'a> {
    /// For a worker on this machine: it writes to the store by its name, and status links are
    /// where people here read.
    pub fn local(forge: &'a Forge, s3: &S3Server, secrets: &'a Secrets, sandbox: Sandbox<'a>) -> RunnerConfig<'a> {
        let link = s3.link_url();
        let logs_link = (link != s3.url()).then(|| format!("{link}logs"));
        RunnerConfig { forge, s3_url: s3.url(), logs_link, s3_hosts: s3.hosts(), secrets, sandbox, hold_failed: false }
    }

    /// Writes it as `job-runner.toml` into `dir`, the secrets as references to their files
    /// (Cockpit's `[{file = ...}]`); returns its path.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use tasks::runner_config::{LogsDriver, RunnerConfig as Config, SandboxKind};
        let mut config = Config::load(None).expect("job-runner's defaults load");
        config.logs.driver = LogsDriver::S3;
        let s3 = &mut config.logs.s3;
        s3.url = format!("{}logs", self.s3_url);
        s3.proxy_url = self.logs_link.clone();
        s3.resolve = self.s3_hosts.clone();
        let github = config.forge.forges.get_mut("github").expect("job-runner's defaults have GitHub");
        github.api_url = self.forge.api_url.clone();
        github.clone_url = self.forge.clone_url.clone();
        github.post = true;
        match self.sandbox {
            Sandbox::Process => config.container.sandbox = SandboxKind::Process,
            Sandbox::Container { socket, image, run_args } => {
                config.container.sandbox = SandboxKind::Container;
                config.container.command = vec!["podman-remote".into(), format!("--url=unix://{}", socket.display())];
                config.container.default_image = image.to_owned();
                config.container.run_args = run_args.to_vec();
            }
        }
        config.hold_failed = self.hold_failed;
        let path = dir.join("job-runner.toml");
        let (key, ca) =
            (self.secrets.s3_keys_dir().join(crate::secrets::S3_HOST), self.secrets.webhook_dir().join("ca.pem"));
        let from_files: [(&[&str], &Path); 3] = [
            (&["logs", "s3", "key"], &key),
            (&["logs", "s3", "ca"], &ca),
            (&["forge", "github", "token"], &self.forge.token_file),
        ];
        std::fs::write(&path, config.to_toml(&from_files))?;
        Ok(path)
    }
}
