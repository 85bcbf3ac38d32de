//! The one GitHub client of the services, on octocrab: commit statuses, pull requests, file
//! contents and branch heads, with Cockpit's configuration (`GITHUB_API`, token files). Only
//! this crate knows octocrab.

use std::path::{Path, PathBuf};

use base64::Engine;
use octocrab::Octocrab;
use serde::{Deserialize, Serialize};

/// GitHub's API, unless `GITHUB_API` says otherwise.
pub const DEFAULT_API: &str = "https://api.github.com";

/// A client of one GitHub API (real, or a mock), authenticated with a token.
#[derive(Clone)]
pub struct GitHub {
    client: Octocrab,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid GitHub API URL {url:?}: {source}")]
    Url { url: String, source: octocrab::Error },
    #[error("no GitHub token: set COCKPIT_GITHUB_TOKEN_FILE, or write one to ~/.config/cockpit-dev/github-token")]
    NoToken,
    #[error("cannot read the GitHub token {}: {source}", path.display())]
    Token { path: PathBuf, source: std::io::Error },
    #[error("GitHub {what} failed: {detail}")]
    Request {
        what: String,
        /// The HTTP status GitHub answered with, when it answered.
        status: Option<u16>,
        detail: String,
    },
    #[error("GitHub {what}: unexpected answer: {detail}")]
    Answer { what: String, detail: String },
}

impl Error {
    /// Whether retrying can help: GitHub was unreachable or answered 5xx.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Request { status: None | Some(500..), .. })
    }
}

/// A commit status to post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub context: String,
    pub state: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

/// A status as GitHub reports it in a commit's combined status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub context: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
}

/// The fields of a pull request CI reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub state: String,
    pub head: Head,
    pub base: Base,
    #[serde(default)]
    pub labels: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Head {
    pub sha: String,
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Base {
    #[serde(rename = "ref")]
    pub branch: String,
    pub repo: BaseRepo,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BaseRepo {
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Deserialize)]
struct Combined {
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Contents {
    content: String,
}

#[derive(Deserialize)]
struct GitRef {
    object: GitObject,
}

#[derive(Deserialize)]
struct GitObject {
    sha: String,
}

#[derive(Deserialize)]
struct Repository {
    default_branch: String,
}

#[derive(Serialize)]
struct Page {
    page: u32,
    per_page: u32,
}

const PER_PAGE: u32 = 100;

/// Cockpit's token: `$COCKPIT_GITHUB_TOKEN_FILE`, else `~/.config/cockpit-dev/github-token`,
/// else `~/.config/github-token`; the file's content, whitespace stripped.
pub fn cockpit_token() -> Result<String, Error> {
    let candidates: Vec<PathBuf> = match std::env::var_os("COCKPIT_GITHUB_TOKEN_FILE") {
        Some(path) => vec![path.into()],
        None => std::env::home_dir()
            .map(|home| vec![home.join(".config/cockpit-dev/github-token"), home.join(".config/github-token")])
            .unwrap_or_default(),
    };
    let path = candidates.iter().find(|path| path.exists()).ok_or(Error::NoToken)?;
    read_token(path)
}

/// A token file's content, whitespace stripped.
pub fn read_token(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|token| token.trim().to_owned())
        .map_err(|source| Error::Token { path: path.to_owned(), source })
}

fn is_not_found(err: &octocrab::Error) -> bool {
    matches!(err, octocrab::Error::GitHub { source, .. } if source.status_code == 404)
}

/// Names the request and says what GitHub (or the connection) answered.
fn request_error(what: String, err: octocrab::Error) -> Error {
    match &err {
        octocrab::Error::GitHub { source, .. } => Error::Request {
            what,
            status: Some(source.status_code.as_u16()),
            detail: format!("{} {}", source.status_code, source.message),
        },
        _ => {
            let mut detail = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                detail = format!("{detail}: {inner}");
                cause = inner.source();
            }
            Error::Request { what, status: None, detail }
        }
    }
}

impl GitHub {
    /// A client of the API at `api` (`GITHUB_API`, e.g. a mock's URL) with `token`.
    pub fn new(api: &str, token: &str) -> Result<GitHub, Error> {
        let url_error = |source| Error::Url { url: api.to_owned(), source };
        let client = Octocrab::builder()
            .base_uri(api)
            .map_err(url_error)?
            .personal_token(token.to_owned())
            .build()
            .map_err(url_error)?;
        Ok(GitHub { client })
    }

    /// `POST /repos/{repo}/statuses/{sha}`.
    pub async fn post_status(&self, repo: &str, sha: &str, status: &StatusUpdate) -> Result<(), Error> {
        let route = format!("/repos/{repo}/statuses/{sha}");
        self.client
            .post::<_, serde_json::Value>(&route, Some(status))
            .await
            .map(drop)
            .map_err(|err| request_error(format!("POST {route}"), err))
    }

    /// Every status of a commit (the combined status, all pages), latest per context.
    pub async fn statuses(&self, repo: &str, sha: &str) -> Result<Vec<Status>, Error> {
        let route = format!("/repos/{repo}/commits/{sha}/status");
        let mut statuses = Vec::new();
        for page in 1.. {
            let combined: Combined = self
                .client
                .get(&route, Some(&Page { page, per_page: PER_PAGE }))
                .await
                .map_err(|err| request_error(format!("GET {route}"), err))?;
            let full = combined.statuses.len() == PER_PAGE as usize;
            statuses.extend(combined.statuses);
            if !full {
                break;
            }
        }
        Ok(statuses)
    }

    /// A pull request, or `None` if there is no such number.
    pub async fn pull(&self, repo: &str, number: u64) -> Result<Option<Pull>, Error> {
        let route = format!("/repos/{repo}/pulls/{number}");
        match self.client.get(&route, None::<&()>).await {
            Ok(pull) => Ok(Some(pull)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(request_error(format!("GET {route}"), err)),
        }
    }

    /// The open pull requests, newest first (every page, following GitHub's `Link` header).
    pub async fn open_pulls(&self, repo: &str) -> Result<Vec<Pull>, Error> {
        let route = format!("/repos/{repo}/pulls");
        let query = [
            ("state", "open".to_owned()),
            ("sort", "created".to_owned()),
            ("direction", "desc".to_owned()),
            ("per_page", PER_PAGE.to_string()),
        ];
        self.every_page(&route, &query).await
    }

    /// Every status posted to a commit, newest first (GitHub's list of statuses, every page):
    /// its history, where the combined status keeps only the latest of each context.
    pub async fn status_history(&self, repo: &str, sha: &str) -> Result<Vec<Status>, Error> {
        let route = format!("/repos/{repo}/commits/{sha}/statuses");
        self.every_page(&route, &[("per_page", PER_PAGE.to_string())]).await
    }

    /// The items of a list, from its first page on, as long as GitHub links a next one.
    async fn every_page<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<T>, Error> {
        let what = || format!("GET {route}");
        let first: octocrab::Page<T> =
            self.client.get(route, Some(&query)).await.map_err(|err| request_error(what(), err))?;
        self.client.all_pages(first).await.map_err(|err| request_error(what(), err))
    }

    /// A file of the repository at `git_ref`, or `None` if it does not exist there.
    pub async fn file(&self, repo: &str, path: &str, git_ref: &str) -> Result<Option<String>, Error> {
        let route = format!("/repos/{repo}/contents/{path}");
        let contents: Contents = match self.client.get(&route, Some(&[("ref", git_ref)])).await {
            Ok(contents) => contents,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(request_error(format!("GET {route}"), err)),
        };
        let base64: String = contents.content.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| Error::Answer { what: format!("GET {route}"), detail: e.to_string() })?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The commit a branch points at.
    pub async fn branch_sha(&self, repo: &str, branch: &str) -> Result<String, Error> {
        let route = format!("/repos/{repo}/git/refs/heads/{branch}");
        let git_ref: GitRef =
            self.client.get(&route, None::<&()>).await.map_err(|err| request_error(format!("GET {route}"), err))?;
        Ok(git_ref.object.sha)
    }

    /// The repository's default branch.
    pub async fn default_branch(&self, repo: &str) -> Result<String, Error> {
        let route = format!("/repos/{repo}");
        let repository: Repository =
            self.client.get(&route, None::<&()>).await.map_err(|err| request_error(format!("GET {route}"), err))?;
        Ok(repository.default_branch)
    }
}
