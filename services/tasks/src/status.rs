//! Commit statuses, as tests-scan ("Not yet tested") and job-runner ("In progress", the
//! outcome) post them: the state as a type, the retries of `retry`, in one place.

use github::{GitHub, StatusUpdate};

use crate::retry::{self, Policy};

/// A status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Success,
    Failure,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
        }
    }
}

/// A commit of a repository, where statuses go.
#[derive(Clone, Copy)]
pub struct Commit<'a> {
    pub github: &'a GitHub,
    pub repo: &'a str,
    pub sha: &'a str,
}

impl Commit<'_> {
    /// Posts `state` and `description` for `context`, linking to `target_url` if any, tried as
    /// `policy` says.
    pub async fn post(
        &self,
        context: &str,
        state: State,
        description: &str,
        target_url: Option<&str>,
        policy: Policy,
    ) -> Result<(), github::Error> {
        let status = StatusUpdate {
            context: context.to_owned(),
            state: state.as_str().to_owned(),
            description: description.to_owned(),
            target_url: target_url.map(str::to_owned),
        };
        retry::transient("status", policy, || self.github.post_status(self.repo, self.sha, &status)).await
    }
}
