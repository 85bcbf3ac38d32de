//! The whole deployment on the `process` runtime, in the order of the data flow: fake secrets,
//! the broker, the S3 store, the mock GitHub with the fixture projects, the webhook binary and
//! the tasks workers. Dropping it tears everything down.

use std::path::{Path, PathBuf};

use crate::service::{ServiceError, Webhook, Worker, WorkerConfig};
use crate::worker::Forge;
use crate::{Broker, MockGitHub, S3Server, Secrets};

/// The fixture projects on the mock GitHub: repository and fixture directory.
pub const REPOS: [(&str, &str); 4] = [
    ("workbench-ci/demo", "passing"),
    ("workbench-ci/failing", "failing"),
    ("workbench-ci/library", "failing"),
    ("workbench-ci/kvm", "kvm"),
];

/// Where the service binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub webhook: PathBuf,
    pub tasks: PathBuf,
}

impl Binaries {
    /// The binaries of a cargo profile's output directory.
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries { webhook: dir.join("webhook"), tasks: dir.join("tasks") }
    }

    /// The binaries of the build a test belongs to: tests run from `target/<profile>/deps/`.
    pub fn of_test_build() -> Binaries {
        let exe = std::env::current_exe().unwrap_or_default();
        Binaries::in_dir(exe.parent().and_then(Path::parent).unwrap_or(Path::new(".")))
    }

    /// Their directory, for `PATH`.
    pub fn dir(&self) -> &Path {
        self.tasks.parent().unwrap_or(Path::new("."))
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub binaries: Binaries,
    /// Existing secrets to use instead of fresh ones.
    pub secrets: Option<PathBuf>,
    pub workers: u16,
    /// The repository's `fixtures/` directory.
    pub fixtures: PathBuf,
    /// The workers talk to github.com with the token in this file, instead of the mock (which
    /// runs all the same, idle).
    pub real_github_token: Option<PathBuf>,
}

/// Told about each step as it starts and ends, to show progress. Independent steps run at
/// the same time, so a step is named by the number `start` returned.
pub trait Progress {
    fn start(&self, step: &str) -> usize;
    fn done(&self, step: usize, ok: bool);
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Secrets(#[from] crate::SecretsError),
    #[error(transparent)]
    Broker(#[from] crate::BrokerError),
    #[error(transparent)]
    S3(#[from] crate::s3_server::S3ServerError),
    #[error(transparent)]
    GitHub(#[from] crate::github::MockError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// A running deployment.
pub struct Deployment {
    pub run_dir: PathBuf,
    pub secrets: Secrets,
    pub test_map: PathBuf,
    pub runner_config: PathBuf,
    pub binaries: Binaries,
    /// The GitHub the workers talk to: the mock, unless in the real GitHub mode.
    pub forge: Forge,
    // Stopped in reverse order of the data flow: workers first, broker last.
    pub workers: Vec<Worker>,
    pub webhook: Webhook,
    pub github: MockGitHub,
    pub s3: S3Server,
    pub broker: Broker,
}

/// Runs one step, telling `progress` about it.
async fn step<T, E>(progress: &dyn Progress, what: &str, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let id = progress.start(what);
    let result = work.await;
    progress.done(id, result.is_ok());
    result
}

impl Deployment {
    /// Brings the deployment up in `run_dir`: what needs nothing else at once (the broker, whose
    /// start is most of the time, the S3 store and the mock GitHub), then the services that
    /// need the broker.
    pub async fn start(run_dir: &Path, options: &Options, progress: &dyn Progress) -> Result<Deployment, DeployError> {
        let secrets = match &options.secrets {
            Some(dir) => Secrets::at(dir),
            None => {
                step(progress, "generating fake secrets", async {
                    crate::secrets::generate(&run_dir.join("secrets"), false)
                })
                .await?
                .0
            }
        };
        let token = std::fs::read_to_string(secrets.github_token())
            .map_err(|source| DeployError::Io { what: format!("read {}", secrets.github_token().display()), source })?;
        let (broker_dir, s3_dir) = (run_dir.join("broker"), run_dir.join("s3"));
        let (broker, s3, github) = tokio::join!(
            step(progress, "starting RabbitMQ (TLS only, certificate login)", Broker::start(&broker_dir, &secrets)),
            step(progress, "starting S3 (HTTPS, buckets logs and images)", S3Server::start(&s3_dir, &secrets, true)),
            step(progress, "starting the mock GitHub with the fixture projects", async {
                let github = MockGitHub::start(&run_dir.join("github"), token.trim()).await?;
                for (repo, fixture) in REPOS {
                    github.add_repo(repo, &options.fixtures.join("repos").join(fixture))?;
                }
                Ok::<_, crate::github::MockError>(github)
            }),
        );
        let (broker, s3, github) = (broker?, s3?, github?);
        let forge = match &options.real_github_token {
            Some(token_file) => Forge::github(token_file),
            None => Forge::mock(&github, &secrets),
        };
        let runner_config = crate::worker::write_runner_config(run_dir, &forge, &s3, &secrets, "process", None)
            .map_err(|source| DeployError::Io { what: "write the job-runner configuration".into(), source })?;
        let test_map = options.fixtures.join("testmap.toml");
        let work_dir = run_dir.join("jobs");
        std::fs::create_dir_all(&work_dir)
            .map_err(|source| DeployError::Io { what: format!("create {}", work_dir.display()), source })?;
        let config = WorkerConfig {
            broker: &broker,
            secrets: &secrets,
            test_map: &test_map,
            forge: &forge,
            runner_config: &runner_config,
            work_dir: &work_dir,
            jobs: 1,
        };
        let workers_label = format!("starting {} tasks worker(s)", options.workers.max(1));
        let (webhook, workers) = tokio::join!(
            step(
                progress,
                "starting the webhook",
                Webhook::start(&options.binaries.webhook, run_dir, &secrets, &broker)
            ),
            step(progress, &workers_label, async {
                let starts = (1..=options.workers.max(1)).map(|n| {
                    let hostname = format!("worker-{n}");
                    let config = &config;
                    async move { Worker::start(&options.binaries.tasks, run_dir, &hostname, config).await }
                });
                futures_util::future::try_join_all(starts).await
            }),
        );
        let deployment = Deployment {
            run_dir: run_dir.to_owned(),
            secrets,
            test_map,
            runner_config,
            binaries: options.binaries.clone(),
            forge,
            workers: workers?,
            webhook: webhook?,
            github,
            s3,
            broker,
        };
        // Where everything is, for people and tools looking at the run directory.
        let endpoints = deployment.endpoints().to_json();
        let path = run_dir.join("endpoints.json");
        std::fs::write(&path, endpoints.to_string())
            .map_err(|source| DeployError::Io { what: format!("write {}", path.display()), source })?;
        Ok(deployment)
    }

    /// How to reach each service.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            amqp: self.broker.address().to_string(),
            secrets: self.secrets.webhook_dir(),
            webhook: self.webhook.url(),
            github_api: self.forge.api_url.clone(),
            s3: self.s3.url(),
        }
    }

    /// The environment in which the tasks tools reach this deployment, as typed in a shell.
    pub fn shell_env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        let endpoints = self.endpoints();
        [
            ("AMQP_SERVER", endpoints.amqp),
            ("WORKBENCH_SECRETS_DIR", endpoints.secrets.display().to_string()),
            ("GITHUB_API", endpoints.github_api),
            ("COCKPIT_GITHUB_TOKEN_FILE", self.forge.token_file.display().to_string()),
            ("WORKBENCH_TESTMAP", self.test_map.display().to_string()),
            ("JOB_RUNNER_CONFIG", self.runner_config.display().to_string()),
            ("WORKBENCH_WEBHOOK", endpoints.webhook),
            ("WORKBENCH_S3", endpoints.s3),
            ("WORKBENCH_S3_LOGS", format!("{}logs/", self.s3.url())),
            ("PATH", format!("{}:{path}", self.binaries.dir().display())),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Each service's name, log file and last `lines` lines, for reports of failures.
    pub fn log_tails(&self, lines: usize) -> Vec<(String, PathBuf, String)> {
        let mut tails = vec![("rabbitmq".to_owned(), self.broker.log_path(), self.broker.log_tail())];
        for service in std::iter::once(&self.webhook.service).chain(self.workers.iter().map(|w| &w.service)) {
            tails.push((service.name().to_owned(), service.log_path().to_owned(), service.log_tail(lines)));
        }
        tails
    }

    /// Every process the deployment started.
    pub fn process_ids(&self) -> Vec<u32> {
        let services = std::iter::once(&self.webhook.service).chain(self.workers.iter().map(|w| &w.service));
        self.broker.process_ids().into_iter().chain(services.flat_map(|s| s.process_ids())).collect()
    }
}

/// Where a running deployment's services are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub amqp: String,
    pub secrets: PathBuf,
    pub webhook: String,
    pub github_api: String,
    pub s3: String,
}

impl Endpoints {
    /// As run-local's report has them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "amqp": self.amqp,
            "secrets": self.secrets,
            "webhook": self.webhook,
            "github_api": self.github_api,
            "s3": self.s3,
        })
    }
}
