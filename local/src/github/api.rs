//! The mock's HTTP routes: the GitHub REST endpoints the CI flow touches, in GitHub's shapes,
//! and the git history of each repository over the dumb HTTP protocol.

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use github::StatusUpdate;
use serde_json::{Value, json};

use super::{Pull, Recorded, Repo, Shared, State as MockState, delivery};

pub(crate) fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/repos/{owner}/{repo}", get(repository))
        .route("/repos/{owner}/{repo}/pulls", get(list_pulls))
        .route("/repos/{owner}/{repo}/pulls/{number}", get(pull))
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
        .route("/repos/{owner}/{repo}/commits/{sha}/status", get(combined_status))
        .route("/repos/{owner}/{repo}/commits/{sha}/statuses", get(list_statuses))
        .route("/repos/{owner}/{repo}/contents/{*path}", get(contents))
        .route("/repos/{owner}/{repo}/git/refs/heads/{*branch}", get(branch_ref))
        .route("/repos/{owner}/{repo}/git/ref/heads/{*branch}", get(branch_ref))
        .route("/repos/{owner}/{repo}/issues", post(create_issue))
        .route("/user", get(user))
        .route_layer(middleware::from_fn_with_state(state.clone(), misbehave))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .route("/git/{owner}/{repo}/{*path}", get(git_file))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// GitHub's error body.
fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})))
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not Found")
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, MockState> {
    state.lock().expect("mock GitHub state")
}

/// Records every request, body included, before it is handled.
async fn record(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    lock(&state).requests.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        at: std::time::Instant::now(),
    });
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// As the API faults say: answers late, and refuses while an outage lasts.
async fn misbehave(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (delay, outage) = {
        let state = lock(&state);
        let faults = &state.api_faults;
        let now = std::time::Instant::now();
        (faults.delay, faults.outage.iter().find(|(until, _)| *until > now).copied())
    };
    tokio::time::sleep(delay).await;
    match outage {
        None => next.run(request).await,
        Some((_, super::Outage::Status(code))) => {
            error(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY), "Server Error")
        }
        Some((until, super::Outage::RateLimit)) => {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let reset = std::time::SystemTime::now() + left + std::time::Duration::from_secs(1);
            let reset = reset.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let mut response = error(StatusCode::FORBIDDEN, "API rate limit exceeded for installation.");
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", "5000".parse().expect("a header value"));
            headers.insert("x-ratelimit-remaining", "0".parse().expect("a header value"));
            headers.insert("x-ratelimit-reset", reset.to_string().parse().expect("a header value"));
            response
        }
    }
}

/// Like GitHub: `Authorization: token <t>` or `Bearer <t>`, else 401.
async fn authenticate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let token = lock(&state).token.clone();
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("token ").or_else(|| value.strip_prefix("Bearer ")));
    if presented != Some(token.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Requires authentication");
    }
    next.run(request).await
}

fn repository_json(state: &MockState, name: &str) -> Value {
    delivery::repository_json(name, &state.clone_url)
}

pub(crate) fn pull_json(state: &MockState, name: &str, repo: &Repo, pull: &Pull) -> Value {
    delivery::pull_json(&delivery::PullView {
        repo: name,
        clone_url: &state.clone_url,
        number: pull.number,
        title: &pull.title,
        head_sha: &pull.head_sha,
        base_sha: &repo.main_sha,
        author: &pull.author,
        state: &pull.state,
        merged: pull.merged,
    })
}

async fn repository(State(state): State<Shared>, Path((owner, repo)): Path<(String, String)>) -> Response {
    let name = format!("{owner}/{repo}");
    let state = lock(&state);
    if !state.repos.contains_key(&name) {
        return not_found();
    }
    axum::Json(repository_json(&state, &name)).into_response()
}

/// One page of a list, as GitHub serves lists: `per_page` items (30 unless asked, at most 100)
/// from `page` (1 unless asked), and a `Link` header to the next and last pages, when there are.
fn page_of(
    items: Vec<Value>,
    query: &HashMap<String, String>,
    uri: &axum::http::Uri,
    host: &str,
    limit: Option<usize>,
) -> Response {
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page: usize =
        query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30).clamp(1, limit.unwrap_or(100));
    let last = items.len().div_ceil(per_page).max(1);
    let link = |to: usize, rel: &str| {
        let mut pairs: Vec<String> =
            query.iter().filter(|(k, _)| *k != "page" && *k != "per_page").map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.extend([format!("per_page={per_page}"), format!("page={to}")]);
        format!("<http://{host}{}?{}>; rel=\"{rel}\"", uri.path(), pairs.join("&"))
    };
    let mut links = Vec::new();
    if page < last {
        links.extend([link(page + 1, "next"), link(last, "last")]);
    }
    if page > 1 {
        links.extend([link(1, "first"), link(page - 1, "prev")]);
    }
    let shown: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut response = axum::Json(shown).into_response();
    if !links.is_empty()
        && let Ok(value) = links.join(", ").parse()
    {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

fn host_of(headers: &axum::http::HeaderMap) -> String {
    headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("localhost").to_owned()
}

async fn list_pulls(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let name = format!("{owner}/{repo}");
    let state = lock(&state);
    let Some(entry) = state.repos.get(&name) else { return not_found() };
    let wanted = query.get("state").map_or("open", String::as_str);
    let pulls: Vec<Value> = entry
        .pulls
        .values()
        .rev()
        .filter(|pull| wanted == "all" || pull.state == wanted)
        .map(|pull| pull_json(&state, &name, entry, pull))
        .collect();
    page_of(pulls, &query, &uri, &host_of(&headers), state.api_faults.page_limit)
}

/// Every status of a commit, newest first (GitHub's list of statuses for a reference).
async fn list_statuses(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let state = lock(&state);
    let Some(entry) = state.repos.get(&format!("{owner}/{repo}")) else { return not_found() };
    let statuses: Vec<Value> = entry
        .statuses
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, (on, _))| *on == sha)
        .map(|(n, (_, status))| {
            json!({
                "id": n + 1, "state": status.state, "description": status.description,
                "target_url": status.target_url, "context": status.context,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })
        })
        .collect();
    page_of(statuses, &query, &uri, &host_of(&headers), state.api_faults.page_limit)
}

async fn pull(State(state): State<Shared>, Path((owner, repo, number)): Path<(String, String, u64)>) -> Response {
    let name = format!("{owner}/{repo}");
    let state = lock(&state);
    let Some(entry) = state.repos.get(&name) else { return not_found() };
    match entry.pulls.get(&number) {
        Some(pull) => axum::Json(pull_json(&state, &name, entry, pull)).into_response(),
        None => not_found(),
    }
}

async fn create_status(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let Ok(status) = serde_json::from_slice::<StatusUpdate>(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    if !["pending", "success", "failure", "error"].contains(&status.state.as_str()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let (refused, delay) = {
        let mut state = lock(&state);
        let faults = &mut state.status_faults;
        (faults.refuse.pop_front(), faults.delay)
    };
    if let Some(code) = refused {
        tokio::time::sleep(delay).await;
        return error(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "Server Error");
    }
    let id = {
        let mut state = lock(&state);
        let id = state.next_id;
        state.next_id += 1;
        let Some(entry) = state.repos.get_mut(&format!("{owner}/{repo}")) else { return not_found() };
        entry.statuses.push((sha, status.clone()));
        id
    };
    // Stored before the answer is held back, as when GitHub is slow to answer.
    tokio::time::sleep(delay).await;
    let created = json!({
        "id": id,
        "state": status.state,
        "description": status.description,
        "target_url": status.target_url,
        "context": status.context,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "creator": {"login": "workbench-bot"},
    });
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

/// GitHub's combined status: the latest status of each context, paginated.
async fn combined_status(
    State(state): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = lock(&state);
    let Some(entry) = state.repos.get(&format!("{owner}/{repo}")) else { return not_found() };
    let mut latest: Vec<&StatusUpdate> = Vec::new();
    for (_, status) in entry.statuses.iter().rev().filter(|(on, _)| *on == sha) {
        if !latest.iter().any(|seen| seen.context == status.context) {
            latest.push(status);
        }
    }
    let overall = if latest.iter().any(|s| s.state == "failure" || s.state == "error") {
        "failure"
    } else if latest.is_empty() || latest.iter().any(|s| s.state == "pending") {
        "pending"
    } else {
        "success"
    };
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30).clamp(1, 100);
    let statuses: Vec<&StatusUpdate> = latest.iter().skip((page - 1) * per_page).take(per_page).copied().collect();
    axum::Json(json!({"state": overall, "sha": sha, "total_count": latest.len(), "statuses": statuses})).into_response()
}

async fn contents(
    State(state): State<Shared>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let state = lock(&state);
    let Some(entry) = state.repos.get(&format!("{owner}/{repo}")) else { return not_found() };
    let git_ref = query.get("ref").map_or("main", String::as_str);
    let Some(bytes) = entry.hosted.file(git_ref, &path) else { return not_found() };
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    // GitHub wraps the base64 content at 60 characters.
    let wrapped: Vec<&str> = encoded.as_bytes().chunks(60).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    let name = path.rsplit('/').next().unwrap_or(&path);
    axum::Json(json!({
        "type": "file", "encoding": "base64", "size": bytes.len(), "name": name, "path": path,
        "content": wrapped.join("\n") + "\n",
    }))
    .into_response()
}

async fn branch_ref(
    State(state): State<Shared>,
    Path((owner, repo, branch)): Path<(String, String, String)>,
) -> Response {
    let state = lock(&state);
    let Some(entry) = state.repos.get(&format!("{owner}/{repo}")) else { return not_found() };
    if branch != "main" {
        return not_found();
    }
    axum::Json(json!({"ref": "refs/heads/main", "object": {"sha": entry.main_sha, "type": "commit"}})).into_response()
}

async fn create_issue(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut state = lock(&state);
    if !state.repos.contains_key(&format!("{owner}/{repo}")) {
        return not_found();
    }
    let Ok(issue) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    let number = state.next_id;
    state.next_id += 1;
    let created = json!({"number": number, "title": issue["title"], "body": issue["body"], "labels": issue["labels"]});
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

async fn user() -> Response {
    axum::Json(json!({"login": "workbench-bot", "id": 1, "type": "Bot"})).into_response()
}

/// The dumb HTTP protocol: files of the bare repository, as written by `git update-server-info`.
async fn git_file(State(state): State<Shared>, Path((owner, repo, path)): Path<(String, String, String)>) -> Response {
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return not_found();
    }
    let file = {
        let state = lock(&state);
        let Some(entry) = state.repos.get(&format!("{owner}/{repo}")) else { return not_found() };
        entry.hosted.bare.join(&path)
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
