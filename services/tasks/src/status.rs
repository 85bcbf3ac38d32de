//! Commit statuses, as tests-scan ("Not yet tested") and job-runner ("In progress", the
//! outcome) post them: the state as a type, the retries of `retry`, in one place.

use github::{GitHub, StatusUpdate};

use retry::Policy;

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

    /// The state GitHub names `name`.
    pub fn parse(name: &str) -> Option<State> {
        [State::Pending, State::Success, State::Failure, State::Error].into_iter().find(|s| s.as_str() == name)
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

/// The status of the job that owns the run of `context` since it was last queued, from the
/// commit's `history` (newest first, as GitHub lists it).
///
/// tests-scan queues a context again while it is pending (Cockpit's rule; cockpit-protocol.md
/// 3.5), so two scans of one pull request, an event's and a rescan's, can queue two jobs for
/// one run. The first job whose "In progress" (or, had that post failed, whose outcome) GitHub
/// lists after the latest "Not yet tested" owns the run; the others stop without a status. Every
/// job reads the same order after it posts, so they agree on the owner. Without a "Not yet
/// tested" (a job queued by hand) nobody owns it: every job runs, as in Cockpit.
pub fn owner<'h>(history: &'h [github::Status], context: &str) -> Option<&'h github::Status> {
    let own: Vec<&github::Status> = history.iter().filter(|s| s.context == context).collect();
    let description = |s: &github::Status| s.description.clone().unwrap_or_default();
    let queued = own
        .iter()
        .position(|s| s.state == State::Pending.as_str() && description(s).starts_with(crate::scan::NOT_TESTED))?;
    own[..queued]
        .iter()
        .rev()
        .find(|s| s.state != State::Pending.as_str() || description(s).starts_with("In progress"))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(context: &str, state: &str, description: &str, target_url: Option<&str>) -> github::Status {
        github::Status {
            context: context.into(),
            state: state.into(),
            description: Some(description.into()),
            target_url: target_url.map(Into::into),
        }
    }

    const C: &str = "fedora-42";

    fn owner_url(history: &[github::Status]) -> Option<&str> {
        owner(history, C).map(|s| s.target_url.as_deref().unwrap_or("-"))
    }

    #[test]
    fn the_first_job_in_progress_after_the_queueing_owns_the_run() {
        let history = [
            status(C, "pending", "In progress [b]", Some("b")),
            status("other", "pending", "In progress [x]", Some("x")),
            status(C, "pending", "In progress [a]", Some("a")),
            status(C, "pending", "Not yet tested", None),
            status(C, "success", "Success [old]", Some("old")),
            status(C, "pending", "In progress [old]", Some("old")),
            status(C, "pending", "Not yet tested", None),
        ];
        assert_eq!(owner_url(&history), Some("a"));
        // Before anyone started, nobody owns it.
        assert_eq!(owner_url(&history[3..]), None);
        // Only b started: b.
        let only_b = [history[0].clone(), history[3].clone()];
        assert_eq!(owner_url(&only_b), Some("b"));
    }

    #[test]
    fn an_outcome_whose_in_progress_was_lost_owns_the_run() {
        let history = [
            status(C, "pending", "In progress [b]", Some("b")),
            status(C, "failure", "Container exited with code 1 [a]", Some("a")),
            status(C, "pending", "Not yet tested (direct trigger)", None),
        ];
        assert_eq!(owner_url(&history), Some("a"));
    }

    #[test]
    fn without_a_queueing_status_nobody_owns_the_run() {
        let history = [
            status(C, "pending", "In progress [b]", Some("b")),
            status(C, "success", "Success [a]", Some("a")),
            status(C, "pending", "In progress [a]", Some("a")),
        ];
        assert_eq!(owner_url(&history), None);
        // A refusal is no queueing either.
        let refused = [status(C, "pending", "Manual testing required", None)];
        assert_eq!(owner_url(&refused), None);
        // Nor is a status that only says it is "not yet tested" in other words.
        let other = [status(C, "pending", "In progress [a]", Some("a")), status(C, "pending", "not yet tested", None)];
        assert_eq!(owner_url(&other), None);
    }
}
