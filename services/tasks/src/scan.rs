//! tests-scan's decisions (cockpit-protocol.md 3.4-3.8), as a pure function: from a pull
//! request, the statuses already on its commit and the test map, which statuses to post and
//! which jobs to queue where.

use amqp::{BASELINE_PRIORITY, Job, JobMessage, MAX_PRIORITY, Subject};
use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use crate::testmap::{Context, TestMap};

/// Cockpit's status descriptions.
pub const NOT_TESTED: &str = "Not yet tested";
pub const NOT_TESTED_DIRECT: &str = "Not yet tested (direct trigger)";
pub const NO_TESTING: &str = "Manual testing required";
const TESTING: &str = "Testing in progress";

/// A pull request (number 0 and no base for a bare commit, as Cockpit synthesizes for `--sha`).
#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub sha: String,
    pub login: String,
    pub base: Option<String>,
    pub labels: Vec<String>,
}

/// A status already on the commit.
#[derive(Debug, Clone)]
pub struct Existing {
    pub context: String,
    pub state: String,
    pub description: Option<String>,
}

/// What tests-scan does for one context.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Post `pending` with this description, then nothing else.
    Refuse { context: String, description: &'static str },
    /// Post `pending` with `description` unless it is `None` (already pending), then queue.
    Queue { description: Option<&'static str>, queue: amqp::Queue, priority: u8, message: Box<JobMessage> },
}

/// Everything tests-scan needs besides the pull request.
pub struct Scan<'a> {
    pub map: &'a TestMap,
    /// The repository scanned (`--repo`).
    pub repo: &'a str,
    /// Logins and organisations whose pull requests are tested without a manual trigger.
    pub allowlist: &'a [String],
    /// Publishing to AMQP (`--amqp`) rather than printing.
    pub amqp: bool,
    /// `COCKPIT_BOTS_REF` for `@bots#N` contexts: the head of bots pull request N, for those
    /// that exist ([`bots_pulls`] says which to look up).
    pub bots_heads: &'a BTreeMap<u64, String>,
    /// `YYYYmmdd-HHMMSS` for the slug.
    pub timestamp: &'a str,
    /// Queue contexts that are already pending again, as Cockpit does for every scan. A rescan
    /// of all open pull requests sets this to `false`: a pending context is queued or running
    /// (queues are persistent), so only direct triggers are queued again.
    pub requeue_pending: bool,
}

/// The bots pull requests (`@bots#N`) that the contexts [`plan`] may queue for `pull` name: those
/// requested, those with a status, and the test map's for its base branch.
pub fn bots_pulls(scan: &Scan, pull: &Pull, existing: &[Existing], requested: &[String]) -> BTreeSet<u64> {
    let mapped = pull.base.as_ref().map(|base| scan.map.contexts(scan.repo, base)).unwrap_or_default();
    let statuses = existing.iter().map(|status| &status.context);
    requested.iter().chain(statuses).chain(&mapped).filter_map(|context| Context::parse(context).bots_pr).collect()
}

/// Decides, for one pull request, every context's action, in order. `requested` are the `-c`
/// contexts (empty: all of the map's).
pub fn plan(scan: &Scan, pull: &Pull, existing: &[Existing], requested: &[String]) -> Vec<Action> {
    // The first status of each context, valid ones only.
    let mut statuses: IndexMap<String, Existing> = IndexMap::new();
    for status in existing {
        if scan.map.is_valid_context(&status.context, scan.repo) && !statuses.contains_key(&status.context) {
            statuses.insert(status.context.clone(), status.clone());
        }
    }
    let mut todo: IndexMap<String, Option<Existing>> = requested.iter().map(|c| (c.clone(), None)).collect();
    for (context, status) in &statuses {
        if requested.is_empty() || requested.contains(context) {
            todo.insert(context.clone(), Some(status.clone()));
        }
    }
    if statuses.is_empty()
        && let Some(base) = &pull.base
    {
        let short: Vec<&str> = requested.iter().map(|c| c.split('@').next().unwrap_or(c)).collect();
        for context in scan.map.contexts(scan.repo, base) {
            if requested.is_empty() || short.contains(&context.split('@').next().unwrap_or(&context)) {
                todo.entry(context).or_insert(None);
            }
        }
    }

    let mut actions = Vec::new();
    for (context, status) in todo {
        let state = status.as_ref().map(|s| s.state.as_str());
        let description = status.as_ref().and_then(|s| s.description.as_deref());
        if matches!(state, Some("success" | "failure")) {
            continue;
        }
        let no_test = pull.labels.iter().any(|l| l == "no-test") || pull.title.contains("[no-test]");
        if no_test && description != Some(NOT_TESTED_DIRECT) {
            continue;
        }
        if description.is_some_and(|d| d.starts_with(TESTING)) {
            continue;
        }
        if state == Some("pending") && !scan.requeue_pending && description != Some(NOT_TESTED_DIRECT) {
            continue;
        }
        if !scan.allowlist.contains(&pull.login) && matches!(description, None | Some(NO_TESTING)) {
            if description.is_none() {
                actions.push(Action::Refuse { context, description: NO_TESTING });
            }
            continue;
        }
        let post = match state {
            Some("pending") => None,
            _ if scan.amqp => Some(NOT_TESTED),
            _ => Some(NOT_TESTED_DIRECT),
        };
        let queue = if context.contains("rhel") { amqp::RHEL } else { amqp::PUBLIC };
        let priority = if context.contains("/devel") { MAX_PRIORITY } else { BASELINE_PRIORITY };
        actions.push(Action::Queue {
            description: post,
            queue,
            priority,
            message: Box::new(job(scan, pull, &context)),
        });
    }
    actions
}

/// The job message for one context, exactly as Cockpit's tests-scan writes it.
fn job(scan: &Scan, pull: &Pull, context: &str) -> JobMessage {
    let parsed = Context::parse(context);
    let command_subject = parsed.repo.as_ref().map(|spec| Subject {
        forge: spec.forge.clone(),
        repo: spec.name.clone(),
        branch: Some(spec.branch.clone().unwrap_or_else(|| scan.map.default_branch(&spec.project).to_owned())),
    });
    let bots_ref = match (parsed.bots_pr, &parsed.repo) {
        (Some(number), _) => scan.bots_heads.get(&number).cloned().unwrap_or_else(|| "xxx".to_owned()),
        (None, Some(_)) if scan.repo == "cockpit-project/bots" => pull.sha.clone(),
        _ => "main".to_owned(),
    };
    let branch = command_subject.as_ref().and_then(|s| s.branch.clone()).or_else(|| pull.base.clone());

    let mut env = IndexMap::new();
    env.insert("TEST_OS".to_owned(), parsed.image.clone());
    env.insert("TEST_REVISION".to_owned(), pull.sha.clone());
    if let Some(scenario) = &parsed.scenario {
        env.insert("TEST_SCENARIO".to_owned(), scenario.clone());
    }
    env.insert("COCKPIT_BOTS_REF".to_owned(), bots_ref.clone());
    if let Some(branch) = &branch {
        env.insert("BASE_BRANCH".to_owned(), branch.clone());
    }
    if pull.number != 0 {
        env.insert("TEST_PULL".to_owned(), pull.number.to_string());
    }
    let job = Job {
        repo: scan.repo.to_owned(),
        sha: Some(pull.sha.clone()),
        context: Some(context.to_owned()),
        pull: (pull.number != 0).then_some(pull.number),
        report: (pull.number == 0)
            .then(|| serde_json::json!({"title": format!("Tests failed on {}", pull.sha), "labels": ["nightly"]})),
        command_subject,
        slug: Some(Job::slug(pull.number, &pull.sha, scan.timestamp, context)),
        env,
        secrets: vec!["github-token".to_owned(), "image-download".to_owned()],
        ..Job::default()
    };
    let project = parsed.repo.as_ref().map_or(scan.repo, |spec| spec.project.as_str());
    let name = format!("pull-{}", pull.number);
    let rev7 = &pull.sha[..pull.sha.len().min(7)];
    let branch = branch.map(|b| format!("   {{{b}}}")).unwrap_or_default();
    let human = format!("{name:11} {:25} {rev7:10}   ({project}) [bots@{bots_ref}]{branch}", parsed.test());
    JobMessage { job, human }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e";
    static BOTS_HEADS: std::sync::LazyLock<BTreeMap<u64, String>> =
        std::sync::LazyLock::new(|| [(1234, "b0b5".to_owned())].into());

    fn scan_with<'a>(map: &'a TestMap, repo: &'a str, allowlist: &'a [String], amqp: bool) -> Scan<'a> {
        Scan {
            map,
            repo,
            allowlist,
            amqp,
            bots_heads: &BOTS_HEADS,
            timestamp: "20240315-135902",
            requeue_pending: true,
        }
    }

    fn pull(login: &str) -> Pull {
        Pull {
            number: 1,
            title: "mock PR".into(),
            sha: SHA.into(),
            login: login.into(),
            base: Some("main".into()),
            labels: vec![],
        }
    }

    fn allowlist() -> Vec<String> {
        vec!["cockpit-project".into()]
    }

    /// Cockpit's own mock PR test: bots PR 1 with `COCKPIT_TESTMAP_INJECT=main/unit-tests`:
    /// Cockpit's keys, in its order, with its values, written as compact JSON (Cockpit's
    /// tests-scan puts a space after each `,` and `:`; the values are the same).
    #[test]
    fn cockpits_mock_pr_job() {
        let map = TestMap::parse("[\"cockpit-project/bots\"]\nmain = []\n").unwrap().inject("main/unit-tests").unwrap();
        let allowlist = allowlist();
        let actions =
            plan(&scan_with(&map, "cockpit-project/bots", &allowlist, true), &pull("cockpit-project"), &[], &[]);
        let [Action::Queue { description, queue, priority, message }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!((*description, queue.name, *priority), (Some("Not yet tested"), "public", 5));
        assert_eq!(
            serde_json::to_string(message).unwrap(),
            r#"{"job":{"repo":"cockpit-project/bots","sha":"a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e","context":"unit-tests","pull":1,"report":null,"command_subject":null,"slug":"pull-1-a4d25bb9-20240315-135902-unit-tests","env":{"TEST_OS":"unit-tests","TEST_REVISION":"a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e","COCKPIT_BOTS_REF":"main","BASE_BRANCH":"main","TEST_PULL":"1"},"secrets":["github-token","image-download"]},"human":"pull-1      unit-tests                a4d25bb      (cockpit-project/bots) [bots@main]   {main}"}"#
        );
    }

    /// `@bots#N` tests with the head of bots pull request N, `xxx` when there is none (as
    /// Cockpit's tests-scan says).
    #[test]
    fn a_bots_pull_request_context_tests_with_that_pull_requests_head() {
        let map = TestMap::parse("[\"o/r\"]\nmain = [\"fedora-44@bots#1234\"]\n").unwrap();
        let allowlist = allowlist();
        let scan = scan_with(&map, "o/r", &allowlist, true);
        let requested = ["debian-testing@bots#99".to_owned()];
        let existing = [Existing { context: "arch@bots#7".into(), state: "error".into(), description: None }];
        assert_eq!(bots_pulls(&scan, &pull("cockpit-project"), &existing, &requested), [7, 99, 1234].into());
        let actions = plan(&scan, &pull("cockpit-project"), &[], &[]);
        let [Action::Queue { message, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(message.job.env["COCKPIT_BOTS_REF"], "b0b5");
        let actions = plan(&scan, &pull("cockpit-project"), &[], &requested);
        let [Action::Queue { message, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(message.job.env["COCKPIT_BOTS_REF"], "xxx", "no such bots pull request");
    }

    #[test]
    fn cross_project_context() {
        let map = TestMap::parse("[\"cockpit-project/bots\"]\nmain = []\n")
            .unwrap()
            .inject("main/unit-tests@cockpit-project/cockpituous")
            .unwrap();
        let allowlist = allowlist();
        let actions =
            plan(&scan_with(&map, "cockpit-project/bots", &allowlist, true), &pull("cockpit-project"), &[], &[]);
        let [Action::Queue { message, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        let subject = message.job.command_subject.as_ref().unwrap();
        assert_eq!(
            (subject.forge.as_str(), subject.repo.as_str(), subject.branch.as_deref()),
            ("", "cockpit-project/cockpituous", Some("main"))
        );
        assert_eq!(
            message.job.slug.as_deref(),
            Some("pull-1-a4d25bb9-20240315-135902-unit-tests-cockpit-project-cockpituous")
        );
        assert_eq!(message.job.env["COCKPIT_BOTS_REF"], SHA, "bots tests another project at the PR's own sha");
        assert!(
            message
                .human
                .ends_with("  (cockpit-project/cockpituous) [bots@a4d25bb9d1d2e0a0b3c4d5e6f708192a3b4c5d6e]   {main}"),
            "{}",
            message.human
        );
    }

    #[test]
    fn routing_priorities_and_skips() {
        let map = TestMap::parse(
            "[\"o/r\"]\nmain = [\"fedora-44\", \"fedora-44/devel\", \"rhel-9-8\", \"done\", \"running\"]\n",
        )
        .unwrap();
        let allowlist = allowlist();
        let existing = [
            Existing { context: "done".into(), state: "success".into(), description: None },
            Existing {
                context: "running".into(),
                state: "pending".into(),
                description: Some("Testing in progress".into()),
            },
            Existing {
                context: "fedora-44".into(),
                state: "error".into(),
                description: Some("Internal error [h]".into()),
            },
        ];
        let requested: Vec<String> =
            ["fedora-44", "fedora-44/devel", "rhel-9-8", "done", "running"].map(String::from).to_vec();
        let actions = plan(&scan_with(&map, "o/r", &allowlist, true), &pull("cockpit-project"), &existing, &requested);
        let queued: Vec<(String, &str, u8)> = actions
            .iter()
            .map(|a| match a {
                Action::Queue { queue, priority, message, .. } => {
                    (message.job.context.clone().unwrap(), queue.name, *priority)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            queued,
            [
                ("fedora-44".into(), "public", 5),
                ("fedora-44/devel".into(), "public", 9),
                ("rhel-9-8".into(), "rhel", 5)
            ]
        );
    }

    /// Cockpit queues a pending context again on every scan; a rescan of all open pull
    /// requests only queues what has no status yet, or was triggered directly.
    #[test]
    fn a_rescan_never_queues_a_pending_context_twice() {
        let map = TestMap::parse("[\"o/r\"]\nmain = [\"a\", \"b\", \"c\", \"d\"]\n").unwrap();
        let allowlist = allowlist();
        let pending = |context: &str, description: &str| Existing {
            context: context.into(),
            state: "pending".into(),
            description: Some(description.into()),
        };
        let existing =
            [pending("a", NOT_TESTED), pending("b", "In progress [worker]"), pending("c", NOT_TESTED_DIRECT)];
        let requested: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let queued = |scan: &Scan| -> Vec<String> {
            plan(scan, &pull("cockpit-project"), &existing, &requested)
                .into_iter()
                .map(|action| match action {
                    Action::Queue { message, .. } => message.job.context.unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let mut scan = scan_with(&map, "o/r", &allowlist, true);
        assert_eq!(queued(&scan), ["a", "b", "c", "d"], "Cockpit's rule for event-driven scans");
        scan.requeue_pending = false;
        assert_eq!(queued(&scan), ["c", "d"]);
    }

    #[test]
    fn strangers_need_a_manual_trigger_and_no_test_is_honoured() {
        let map = TestMap::parse("[\"o/r\"]\nmain = [\"fedora-44\"]\n").unwrap();
        let allowlist = allowlist();
        let scan = scan_with(&map, "o/r", &allowlist, false);
        assert_eq!(
            plan(&scan, &pull("stranger"), &[], &[]),
            [Action::Refuse { context: "fedora-44".into(), description: NO_TESTING }]
        );
        let triggered = [Existing {
            context: "fedora-44".into(),
            state: "pending".into(),
            description: Some(NOT_TESTED_DIRECT.into()),
        }];
        let actions = plan(&scan, &pull("stranger"), &triggered, &[]);
        assert!(matches!(actions.as_slice(), [Action::Queue { description: None, .. }]), "{actions:?}");

        let mut labelled = pull("cockpit-project");
        labelled.labels = vec!["no-test".into()];
        assert!(plan(&scan, &labelled, &[], &[]).is_empty());
        let direct = plan(&scan, &pull("cockpit-project"), &[], &[]);
        assert!(
            matches!(direct.as_slice(), [Action::Queue { description: Some(NOT_TESTED_DIRECT), .. }]),
            "without --amqp: {direct:?}"
        );
    }
}
