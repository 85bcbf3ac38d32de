//! The one GitHub client of the services, on octocrab: commit statuses, pull requests, file
//! contents and branch heads, with Cockpit's configuration (`GITHUB_API`, token files). Only
//! this crate knows octocrab. Every failure says whether trying later can help, as GitHub's
//! answer says it ([`Error::is_transient`]), and when to try again after a rate limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::HeaderValue;
use http::header::USER_AGENT;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::rt::TokioExecutor;
use octocrab::service::middleware::auth_header::AuthHeaderLayer;
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::service::middleware::extra_headers::ExtraHeadersLayer;
use octocrab::{AuthState, FromResponse, Octocrab, OctocrabBuilder};
use serde::{Deserialize, Serialize};

pub use events::{Base, Head, Label, PullRequest as Pull, Repository, User};

/// GitHub's API, unless `GITHUB_API` says otherwise.
pub const DEFAULT_API: &str = "https://api.github.com";

/// How long a request may wait to connect, and for each read of the answer: a GitHub that
/// stops answering is a transient failure, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one GitHub API (real, or a mock), authenticated with a token.
#[derive(Clone)]
pub struct GitHub {
    client: Octocrab,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid GitHub API URL {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("no GitHub token: set COCKPIT_GITHUB_TOKEN_FILE, or write one to ~/.config/cockpit-dev/github-token")]
    NoToken,
    #[error("GitHub client set-up failed: {0}")]
    Tls(String),
    #[error("the GitHub token holds characters an HTTP header cannot carry: write the token alone in its file")]
    BadToken,
    #[error("cannot read the GitHub token {}: {source}", path.display())]
    Token { path: PathBuf, source: std::io::Error },
    /// GitHub answered, refusing: `retry_at` is when a rate limit ends, if it was one.
    #[error("GitHub {what} failed: {status} {detail}")]
    Status { what: String, status: u16, detail: String, retry_at: Option<SystemTime> },
    /// GitHub did not answer (connection refused, reset, timed out).
    #[error("GitHub {what} failed: {detail}")]
    Transport { what: String, detail: String },
    #[error("GitHub {what}: unexpected answer: {detail}")]
    Answer { what: String, detail: String },
}

impl Error {
    /// Whether GitHub limited our rate.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, Error::Status { retry_at: Some(_), .. })
    }
}

/// The verdict of GitHub's answer: a failure that may pass, and a rate limit's end.
impl retry::Transient for Error {
    /// Whether trying later can help: GitHub was unreachable, failed (5xx), timed out (408),
    /// or limited our rate (429, or 403 with no requests left). Other refusals are about the
    /// request, and would be refused again.
    fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Status { status, retry_at, .. } => {
                *status >= 500 || [408, 429].contains(status) || retry_at.is_some()
            }
            _ => false,
        }
    }

    /// How long to wait before trying again, when GitHub said (a rate limit).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_at: Some(at), .. } => Some(at.duration_since(SystemTime::now()).unwrap_or_default()),
            _ => None,
        }
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

/// A status as GitHub reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub context: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
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
struct RepositoryInfo {
    default_branch: String,
}

/// The most GitHub gives in one page.
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

type Response = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

/// When a rate limit that refused a request ends: `Retry-After` (seconds), else
/// `x-ratelimit-reset` (Unix seconds) when no request is left or the answer was 429.
fn rate_limit(status: u16, headers: &http::HeaderMap) -> Option<SystemTime> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    let limited = status == 429
        || (status == 403 && (header("x-ratelimit-remaining") == Some("0") || header("retry-after").is_some()));
    if !limited {
        return None;
    }
    if let Some(seconds) = header("retry-after").and_then(|value| value.parse::<u64>().ok()) {
        return Some(SystemTime::now() + Duration::from_secs(seconds));
    }
    match header("x-ratelimit-reset").and_then(|value| value.parse::<u64>().ok()) {
        Some(reset) => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(reset)),
        // A 429 that says nothing: a minute is GitHub's own advice.
        None => Some(SystemTime::now() + Duration::from_secs(60)),
    }
}

/// Names the cause chain of a transport failure.
fn transport(what: &str, err: octocrab::Error) -> Error {
    let mut detail = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        detail = format!("{detail}: {inner}");
        cause = inner.source();
    }
    Error::Transport { what: what.to_owned(), detail }
}

impl GitHub {
    /// A client of the API at `api` (`GITHUB_API`, e.g. a mock's URL) with `token`.
    pub fn new(api: &str, token: &str) -> Result<GitHub, Error> {
        let url_error = |detail: String| Error::Url { url: api.to_owned(), detail };
        let base: http::Uri = api.parse().map_err(|err: http::uri::InvalidUri| url_error(err.to_string()))?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(url_error("not an absolute URL".into()));
        }
        // octocrab's own stack (its user agent, base URI and token header) over the services'
        // one connector, whose requests never arrive late.
        let connector =
            connector::https(None, GaiResolver::new(), CONNECT_TIMEOUT).map_err(|err| Error::Tls(err.to_string()))?;
        // The connect timeout here bounds the name lookup and the TLS handshake too (the
        // connector's own, the TCP connect alone).
        let mut connector = hyper_timeout::TimeoutConnector::new(connector);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_read_timeout(Some(READ_TIMEOUT));
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        let auth = format!("Bearer {token}").parse().map_err(|_| Error::BadToken)?;
        let client = OctocrabBuilder::new_empty()
            .with_service(client)
            .with_layer(&ExtraHeadersLayer::new(Arc::new(vec![(USER_AGENT, HeaderValue::from_static("octocrab"))])))
            .with_layer(&BaseUriLayer::new(base.clone()))
            .with_layer(&AuthHeaderLayer::new(Some(auth), base.clone(), base))
            .with_auth(AuthState::None)
            .build()
            .unwrap_or_else(|never| match never {});
        Ok(GitHub { client })
    }

    /// Sends a request; a refusal becomes [`Error::Status`] with what GitHub said.
    async fn send(
        &self,
        what: &str,
        request: impl Future<Output = octocrab::Result<Response>>,
    ) -> Result<Response, Error> {
        let response = request.await.map_err(|err| transport(what, err))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(response);
        }
        let retry_at = rate_limit(status, response.headers());
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        #[derive(Deserialize)]
        struct Message {
            message: String,
        }
        let detail = serde_json::from_slice::<Message>(&body)
            .map(|m| m.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
        Err(Error::Status { what: what.to_owned(), status, detail, retry_at })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, route: &str) -> Result<T, Error> {
        let what = format!("GET {route}");
        let response = self.send(&what, self.client._get(route)).await?;
        let body = response.into_body().collect().await.map_err(|err| transport(&what, err))?.to_bytes();
        serde_json::from_slice(&body).map_err(|err| Error::Answer { what, detail: err.to_string() })
    }

    /// A GET whose 404 means "there is none".
    async fn get_optional<T: serde::de::DeserializeOwned>(&self, route: &str) -> Result<Option<T>, Error> {
        match self.get(route).await {
            Ok(found) => Ok(Some(found)),
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `POST /repos/{repo}/statuses/{sha}`.
    pub async fn post_status(&self, repo: &str, sha: &str, status: &StatusUpdate) -> Result<(), Error> {
        let route = format!("/repos/{repo}/statuses/{sha}");
        self.send(&format!("POST {route}"), self.client._post(route.as_str(), Some(status))).await.map(drop)
    }

    /// The latest status of each context of a commit (GitHub's combined status, every page).
    pub async fn statuses(&self, repo: &str, sha: &str) -> Result<Vec<Status>, Error> {
        let route = format!("/repos/{repo}/commits/{sha}/status");
        let mut statuses = Vec::new();
        for page in 1.. {
            let combined: Combined = self.get(&format!("{route}?page={page}&per_page={PER_PAGE}")).await?;
            let full = combined.statuses.len() == PER_PAGE as usize;
            statuses.extend(combined.statuses);
            if !full {
                break;
            }
        }
        Ok(statuses)
    }

    /// Every status posted to a commit, newest first (GitHub's list of statuses, every page):
    /// its history, where the combined status keeps only the latest of each context.
    pub async fn status_history(&self, repo: &str, sha: &str) -> Result<Vec<Status>, Error> {
        self.every_page(&format!("/repos/{repo}/commits/{sha}/statuses?per_page={PER_PAGE}")).await
    }

    /// A pull request, or `None` if there is no such number.
    pub async fn pull(&self, repo: &str, number: u64) -> Result<Option<Pull>, Error> {
        self.get_optional(&format!("/repos/{repo}/pulls/{number}")).await
    }

    /// The open pull requests, newest first (every page, following GitHub's `Link` header).
    pub async fn open_pulls(&self, repo: &str) -> Result<Vec<Pull>, Error> {
        let route = format!("/repos/{repo}/pulls?state=open&sort=created&direction=desc&per_page={PER_PAGE}");
        self.every_page(&route).await
    }

    /// The items of a list, from its first page on, as long as GitHub links a next one.
    async fn every_page<T: serde::de::DeserializeOwned>(&self, first: &str) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut next = Some(first.to_owned());
        while let Some(route) = next {
            let what = format!("GET {route}");
            let response = self.send(&what, self.client._get(route.as_str())).await?;
            let mut page = octocrab::Page::<T>::from_response(response)
                .await
                .map_err(|err| Error::Answer { what: what.clone(), detail: err.to_string() })?;
            items.append(&mut page.take_items());
            next = page.next.map(|uri| uri.to_string());
        }
        Ok(items)
    }

    /// A file of the repository at `git_ref`, or `None` if it does not exist there.
    pub async fn file(&self, repo: &str, path: &str, git_ref: &str) -> Result<Option<String>, Error> {
        let route = format!("/repos/{repo}/contents/{path}?ref={git_ref}");
        let Some(contents) = self.get_optional::<Contents>(&route).await? else { return Ok(None) };
        let base64: String = contents.content.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| Error::Answer { what: format!("GET {route}"), detail: e.to_string() })?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The commit a branch points at.
    pub async fn branch_sha(&self, repo: &str, branch: &str) -> Result<String, Error> {
        let git_ref: GitRef = self.get(&format!("/repos/{repo}/git/refs/heads/{branch}")).await?;
        Ok(git_ref.object.sha)
    }

    /// The repository's default branch.
    pub async fn default_branch(&self, repo: &str) -> Result<String, Error> {
        let repository: RepositoryInfo = self.get(&format!("/repos/{repo}")).await?;
        Ok(repository.default_branch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retry::Transient;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    fn status(code: u16, retry_at: Option<SystemTime>) -> Error {
        Error::Status { what: "GET /x".into(), status: code, detail: String::new(), retry_at }
    }

    #[test]
    fn rate_limits_say_when_they_end() {
        let reset = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let limited = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "4000000000")]);
        assert_eq!(rate_limit(403, &limited), Some(reset));
        assert_eq!(rate_limit(429, &headers(&[("x-ratelimit-reset", "4000000000")])), Some(reset));
        let soon = rate_limit(403, &headers(&[("retry-after", "30")])).unwrap();
        assert!(
            soon > SystemTime::now() + Duration::from_secs(29) && soon <= SystemTime::now() + Duration::from_secs(30)
        );
        assert_eq!(rate_limit(403, &headers(&[("x-ratelimit-remaining", "12")])), None, "a 403 about the request");
        assert_eq!(rate_limit(404, &limited), None);
    }

    #[test]
    fn what_trying_later_can_help() {
        for transient in [
            status(500, None),
            status(502, None),
            status(408, None),
            status(429, None),
            status(403, Some(SystemTime::now())),
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
        assert!(Error::Transport { what: "GET /x".into(), detail: "refused".into() }.is_transient());
        for permanent in [status(400, None), status(401, None), status(403, None), status(404, None), status(422, None)]
        {
            assert!(!permanent.is_transient(), "{permanent:?}");
        }
        let later = status(403, Some(SystemTime::now() + Duration::from_secs(60)));
        assert!(later.retry_after().is_some_and(|wait| wait > Duration::from_secs(58)) && later.is_rate_limit());
    }

    /// A server that takes the connection and never answers the TLS handshake (a stuck load
    /// balancer) fails the request after the connect timeout, as a transient failure: it does
    /// not hang the job.
    #[tokio::test]
    async fn a_stalled_tls_handshake_fails_within_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap());
            }
        });
        let client = GitHub::new(&format!("https://{address}"), "token").unwrap();
        let started = std::time::Instant::now();
        let asked = tokio::time::timeout(CONNECT_TIMEOUT * 3, client.pull("o/r", 1)).await;
        let err = asked.expect("the request ended on its own").expect_err("no answer came");
        assert!(err.is_transient(), "{err}");
        assert!(started.elapsed() >= CONNECT_TIMEOUT, "it waited for the connect timeout: {err}");
        held.abort();
    }
}
