//! The mock GitHub of the local deployment: a real HTTP server (axum, on 127.0.0.1) that the
//! real GitHub client talks to, with a model of repositories, pull requests and statuses that
//! scenarios set up and read back, every request recorded. It also hosts each repository's git
//! history, so jobs clone the very commit a pull request points at.

mod api;
pub mod delivery;
mod repo;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use github::StatusUpdate;
use tokio::sync::oneshot;

pub use delivery::Delivery;
use repo::HostedRepo;

/// A running mock GitHub. Dropping it stops the server.
pub struct MockGitHub {
    address: SocketAddr,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("mock GitHub: {0}")]
    Io(#[from] std::io::Error),
    #[error("mock GitHub: {0}")]
    Git(String),
    #[error("mock GitHub has no repository {0:?}; add it first")]
    UnknownRepo(String),
    #[error("mock GitHub: {repo} has no pull request #{number}")]
    UnknownPull { repo: String, number: u64 },
}

/// One request the mock received, as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: String,
    /// When it arrived, for latency measurements.
    pub at: std::time::Instant,
}

type Shared = Arc<Mutex<State>>;

pub(crate) struct State {
    token: String,
    root: PathBuf,
    clone_url: String,
    repos: BTreeMap<String, Repo>,
    requests: Vec<Recorded>,
    next_id: u64,
    status_faults: StatusFaults,
    api_faults: ApiFaults,
}

/// How the mock misbehaves when statuses are posted, as GitHub does in an outage.
#[derive(Debug, Clone, Default)]
pub struct StatusFaults {
    /// The next status POSTs are answered with these HTTP statuses, in order, and not stored.
    pub refuse: std::collections::VecDeque<u16>,
    /// Every status POST is answered this late (a stored status is stored at once).
    pub delay: std::time::Duration,
}

/// How the whole API misbehaves, as GitHub does in an outage: every request (reads and writes,
/// git's excepted) answered late, and periods, one after another from when they are set, in
/// which every request is refused.
#[derive(Debug, Clone, Default)]
pub struct ApiFaults {
    pub delay: std::time::Duration,
    /// The most items a page of a list holds, whatever `per_page` asks (GitHub's is 100): a
    /// few items then take several pages.
    pub page_limit: Option<usize>,
    /// `(until, how)`: refused so until each moment, the first period first.
    pub outage: Vec<(std::time::Instant, Outage)>,
}

/// How GitHub refuses in an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// With this HTTP status (502: its gateway failing).
    Status(u16),
    /// 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` the end of the period, as
    /// GitHub answers a client out of requests.
    RateLimit,
}

impl ApiFaults {
    /// Periods of `how` for `each` long, one after another from now.
    pub fn outage(periods: &[(std::time::Duration, Outage)]) -> ApiFaults {
        let mut until = std::time::Instant::now();
        let outage = periods
            .iter()
            .map(|(each, how)| {
                until += *each;
                (until, *how)
            })
            .collect();
        ApiFaults { outage, ..ApiFaults::default() }
    }
}

pub(crate) struct Repo {
    hosted: HostedRepo,
    main_sha: String,
    pulls: BTreeMap<u64, Pull>,
    /// Every status posted, in order, with the commit it was posted to.
    statuses: Vec<(String, StatusUpdate)>,
}

#[derive(Clone)]
pub(crate) struct Pull {
    number: u64,
    title: String,
    head_sha: String,
    author: String,
    state: String,
    merged: bool,
}

/// Opens pull request `number` of `repo` in `state`; its head.
fn open_pull(state: &mut State, repo: &str, number: u64, title: &str, author: &str) -> Result<String, MockError> {
    let entry = state.repos.get_mut(repo).ok_or_else(|| MockError::UnknownRepo(repo.to_owned()))?;
    let head_sha = entry.hosted.open_pull(number, &entry.main_sha, &format!("{title}\n"))?;
    let pull = Pull {
        number,
        title: title.to_owned(),
        head_sha: head_sha.clone(),
        author: author.to_owned(),
        state: "open".into(),
        merged: false,
    };
    entry.pulls.insert(number, pull);
    Ok(head_sha)
}

impl MockGitHub {
    /// Starts the mock on a free port of 127.0.0.1, keeping its repositories under `root`.
    /// Requests must carry `Authorization: token <token>` (or `Bearer`).
    pub async fn start(root: &Path, token: &str) -> Result<MockGitHub, MockError> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            root: root.to_owned(),
            clone_url: format!("http://{address}/git/"),
            repos: BTreeMap::new(),
            requests: Vec::new(),
            next_id: 1,
            status_faults: StatusFaults::default(),
            api_faults: ApiFaults::default(),
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        let router = api::router(state.clone());
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
                tracing::error!(%err, "mock GitHub stopped");
            }
        });
        Ok(MockGitHub { address, state, stop: Some(stop) })
    }

    /// The API base URL (Cockpit's `GITHUB_API`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// What job-runner's `clone-url` is set to: a repository clones from this plus `owner/name`.
    pub fn clone_url(&self) -> String {
        self.lock().clone_url.clone()
    }

    /// Hosts `name` (`owner/repo`) with one commit on `main` holding the files of `fixture`;
    /// returns that commit's sha.
    pub fn add_repo(&self, name: &str, fixture: &Path) -> Result<String, MockError> {
        add_repo(&self.state, name, fixture)
    }

    /// Hosts `repos` (`owner/repo` and fixture directory each) as [`MockGitHub::add_repo`] does,
    /// on a thread of its own: git's work does not hold up the runtime (the deployment's other
    /// starts go on meanwhile). The handle ends when they are all in.
    pub fn add_repos(&self, repos: Vec<(String, PathBuf)>) -> tokio::task::JoinHandle<Result<(), MockError>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            repos.iter().try_for_each(|(name, fixture)| add_repo(&state, name, fixture).map(drop))
        })
    }

    /// Opens pull request `number` against `main` of `repo`, with a new commit by `author`;
    /// returns the head sha.
    pub fn open_pull(&self, repo: &str, number: u64, title: &str, author: &str) -> Result<String, MockError> {
        open_pull(&mut self.lock(), repo, number, title, author)
    }

    /// Opens the next pull request of `repo` (one past the highest number it has had), so that
    /// scenarios run again, or side by side, each get a pull request, a head and an event of
    /// their own. Returns its number and head.
    pub fn open_next_pull(&self, repo: &str, title: &str, author: &str) -> Result<(u64, String), MockError> {
        let mut state = self.lock();
        let entry = state.repos.get(repo).ok_or_else(|| MockError::UnknownRepo(repo.to_owned()))?;
        let number = entry.pulls.keys().next_back().map_or(1, |last| last + 1);
        Ok((number, open_pull(&mut state, repo, number, title, author)?))
    }

    /// Pushes a commit changing `file` to `main` of `repo`, as a developer would once a pull
    /// request against it is open; returns the new head of `main`.
    pub fn push_to_main(&self, repo: &str, file: &str, content: &str) -> Result<String, MockError> {
        let mut state = self.lock();
        let entry = state.repos.get_mut(repo).ok_or_else(|| MockError::UnknownRepo(repo.to_owned()))?;
        entry.main_sha = entry.hosted.push_main(&entry.main_sha, file, content)?;
        Ok(entry.main_sha.clone())
    }

    /// Closes pull request `number`, merged or not (a later `closed` event reports it).
    pub fn close_pull(&self, repo: &str, number: u64, merged: bool) -> Result<(), MockError> {
        let mut state = self.lock();
        let entry = state.repos.get_mut(repo).ok_or_else(|| MockError::UnknownRepo(repo.to_owned()))?;
        let pull = entry.pulls.get_mut(&number).ok_or(MockError::UnknownPull { repo: repo.to_owned(), number })?;
        pull.state = "closed".into();
        pull.merged = merged;
        Ok(())
    }

    /// Every status posted to `sha` of `repo`, in the order they arrived.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<StatusUpdate> {
        let state = self.lock();
        let Some(entry) = state.repos.get(repo) else { return Vec::new() };
        entry.statuses.iter().filter(|(on, _)| on == sha).map(|(_, status)| status.clone()).collect()
    }

    /// Every status posted, to any repository: its repository, commit and content, in the
    /// order they arrived per repository.
    pub fn all_statuses(&self) -> Vec<(String, String, StatusUpdate)> {
        let state = self.lock();
        let each = state.repos.iter().flat_map(|(repo, entry)| {
            entry.statuses.iter().map(move |(sha, status)| (repo.clone(), sha.clone(), status.clone()))
        });
        each.collect()
    }

    /// From now on, status POSTs misbehave as `faults` says.
    pub fn set_status_faults(&self, faults: StatusFaults) {
        self.lock().status_faults = faults;
    }

    /// From now on, the whole API misbehaves as `faults` says.
    pub fn set_api_faults(&self, faults: ApiFaults) {
        self.lock().api_faults = faults;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The webhook delivery GitHub sends when `action` happens to a pull request.
    pub fn pull_request_event(&self, repo: &str, number: u64, action: &str) -> Result<Delivery, MockError> {
        let state = self.lock();
        let entry = state.repos.get(repo).ok_or_else(|| MockError::UnknownRepo(repo.to_owned()))?;
        let pull = entry.pulls.get(&number).ok_or(MockError::UnknownPull { repo: repo.to_owned(), number })?;
        Ok(delivery::pull_request(action, &api::pull_json(&state, repo, entry, pull), repo, &state.clone_url))
    }

    /// The `status` delivery GitHub sends when a status is set on `sha` (e.g. by
    /// tests-trigger: pending, "Not yet tested (direct trigger)").
    pub fn status_event(&self, repo: &str, sha: &str, status: &StatusUpdate) -> Result<Delivery, MockError> {
        let state = self.lock();
        if !state.repos.contains_key(repo) {
            return Err(MockError::UnknownRepo(repo.to_owned()));
        }
        let body = serde_json::json!({
            "sha": sha,
            "name": repo,
            "context": status.context,
            "state": status.state,
            "description": status.description,
            "target_url": status.target_url,
            "branches": [],
            "repository": delivery::repository_json(repo, &state.clone_url),
            "sender": {"login": "workbench-bot"},
        });
        Ok(Delivery::new("status", &body))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn add_repo(state: &Shared, name: &str, fixture: &Path) -> Result<String, MockError> {
    // The repository is made without the lock: the API answers meanwhile.
    let root = lock(state).root.clone();
    let (hosted, main_sha) = HostedRepo::create(&root, name, fixture)?;
    let repo = Repo { hosted, main_sha: main_sha.clone(), pulls: BTreeMap::new(), statuses: Vec::new() };
    lock(state).repos.insert(name.to_owned(), repo);
    Ok(main_sha)
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().expect("mock GitHub state")
}

impl Drop for MockGitHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
