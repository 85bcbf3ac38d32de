//! Cockpit's test map (cockpit-protocol.md 3.1, 3.2): which contexts run for which repository
//! and branch, and the grammar of a context `IMAGE[/SCENARIO][@bots#N][@[FORGE:]OWNER/REPO[/BRANCH]]`.

use std::collections::BTreeMap;
use std::path::Path;

/// Repository → branch → contexts. The pseudo-branch `_manual` lists contexts that are valid
/// but only run when asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestMap {
    repos: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// `COCKPIT_TESTMAP_INJECT`: (branch, context) added for every repository.
    inject: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TestMapError {
    #[error("cannot read the test map {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the test map is not valid TOML of the form [\"owner/repo\"] branch = [\"context\", ...]: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("COCKPIT_TESTMAP_INJECT must be BRANCH/CONTEXT, not {0:?}")]
    Inject(String),
}

impl TestMap {
    pub fn parse(text: &str) -> Result<TestMap, TestMapError> {
        Ok(TestMap { repos: toml::from_str(text)?, inject: None })
    }

    pub fn load(path: &Path) -> Result<TestMap, TestMapError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TestMapError::Read { path: path.display().to_string(), source })?;
        TestMap::parse(&text)
    }

    /// Applies `COCKPIT_TESTMAP_INJECT` (`BRANCH/CONTEXT`, split at the first `/`).
    pub fn inject(mut self, spec: &str) -> Result<TestMap, TestMapError> {
        let (branch, context) = spec
            .split_once('/')
            .filter(|(b, c)| !b.is_empty() && !c.is_empty())
            .ok_or_else(|| TestMapError::Inject(spec.to_owned()))?;
        self.inject = Some((branch.to_owned(), context.to_owned()));
        Ok(self)
    }

    /// The contexts to test for a pull request of `repo` against `branch`.
    pub fn contexts(&self, repo: &str, branch: &str) -> Vec<String> {
        let mut contexts = self.repos.get(repo).and_then(|branches| branches.get(branch)).cloned().unwrap_or_default();
        if let Some((injected_branch, context)) = &self.inject
            && injected_branch == branch
        {
            contexts.push(context.clone());
        }
        contexts
    }

    /// `master` if the map knows that branch for `repo`, else `main`.
    pub fn default_branch(&self, repo: &str) -> &'static str {
        match self.repos.get(repo) {
            Some(branches) if branches.contains_key("master") => "master",
            _ => "main",
        }
    }

    /// The GitHub projects of the map (keys without a forge prefix).
    pub fn projects(&self) -> Vec<&str> {
        self.repos.keys().map(String::as_str).filter(|repo| !repo.contains(':')).collect()
    }

    /// Whether `context` is one the map knows, for statuses found on a commit of `repo`.
    pub fn is_valid_context(&self, context: &str, repo: &str) -> bool {
        let parsed = Context::parse(context);
        let known = |repo: &str, branches: &[&str]| {
            branches.iter().flat_map(|branch| self.contexts(repo, branch)).any(|known| image_of(&known) == parsed.image)
        };
        match &parsed.repo {
            Some(spec) => {
                let branch = spec.branch.clone().unwrap_or_else(|| self.default_branch(&spec.project).to_owned());
                known(&spec.project, &[&branch, "_manual"])
            }
            None => {
                let mut branches: Vec<&str> =
                    self.repos.get(repo).map(|b| b.keys().map(String::as_str).collect()).unwrap_or_default();
                if let Some((branch, _)) = &self.inject {
                    branches.push(branch);
                }
                known(repo, &branches)
            }
        }
    }
}

fn image_of(context: &str) -> &str {
    context.split('@').next().unwrap_or(context).split('/').next().unwrap_or(context)
}

/// A context, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub image: String,
    pub scenario: Option<String>,
    /// `@bots#N`: test with the bots of that pull request.
    pub bots_pr: Option<u64>,
    /// `@[FORGE:]OWNER/REPO[/BRANCH]`: run that project's tests.
    pub repo: Option<RepoSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `forge:owner/repo` as written (the test map key).
    pub project: String,
    /// The forge name, `""` for the default one.
    pub forge: String,
    /// `owner/repo` without the forge.
    pub name: String,
    pub branch: Option<String>,
}

impl Context {
    pub fn parse(context: &str) -> Context {
        let mut parts = context.split('@');
        let test = parts.next().unwrap_or_default();
        let (image, scenario) = match test.split_once('/') {
            Some((image, scenario)) => (image.to_owned(), Some(scenario.to_owned())),
            None => (test.to_owned(), None),
        };
        let mut bots_pr = None;
        let mut repo = None;
        for part in parts {
            match part.strip_prefix("bots#").and_then(|n| n.parse().ok()) {
                Some(number) if repo.is_none() => bots_pr = Some(number),
                _ => repo = Some(RepoSpec::parse(part)),
            }
        }
        Context { image, scenario, bots_pr, repo }
    }

    /// The `IMAGE[/SCENARIO]` part.
    pub fn test(&self) -> String {
        match &self.scenario {
            Some(scenario) => format!("{}/{scenario}", self.image),
            None => self.image.clone(),
        }
    }
}

impl RepoSpec {
    fn parse(spec: &str) -> RepoSpec {
        let mut parts = spec.splitn(3, '/');
        let (owner, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let branch = parts.next().map(str::to_owned);
        let project = format!("{owner}/{name}");
        let (forge, name) = match project.split_once(':') {
            Some((forge, name)) => (forge.to_owned(), name.to_owned()),
            None => (String::new(), project.clone()),
        };
        RepoSpec { project, forge, name, branch }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
["cockpit-project/cockpit"]
main = ["fedora-44", "fedora-44/devel", "rhel-9-8/ws-container"]
"rhel-8" = ["rhel-8-10"]
_manual = ["arch"]

["cockpit-project/bots"]
main = []

["codeberg:lis/test.thing"]
"cockpit-ci" = ["arch"]

["old/project"]
master = ["debian-stable"]
"#;

    fn map() -> TestMap {
        TestMap::parse(MAP).unwrap()
    }

    #[test]
    fn contexts_per_branch() {
        assert_eq!(
            map().contexts("cockpit-project/cockpit", "main"),
            ["fedora-44", "fedora-44/devel", "rhel-9-8/ws-container"]
        );
        assert_eq!(map().contexts("cockpit-project/cockpit", "rhel-8"), ["rhel-8-10"]);
        assert!(map().contexts("cockpit-project/bots", "main").is_empty());
        assert!(map().contexts("unknown/repo", "main").is_empty());
        assert_eq!(map().projects(), ["cockpit-project/bots", "cockpit-project/cockpit", "old/project"]);
        assert_eq!(
            (map().default_branch("old/project"), map().default_branch("cockpit-project/cockpit")),
            ("master", "main")
        );
    }

    #[test]
    fn injection_as_in_cockpits_tests() {
        let injected = map().inject("main/unit-tests@cockpit-project/cockpituous").unwrap();
        assert_eq!(injected.contexts("cockpit-project/bots", "main"), ["unit-tests@cockpit-project/cockpituous"]);
        assert_eq!(injected.contexts("unknown/repo", "main"), ["unit-tests@cockpit-project/cockpituous"]);
        assert!(injected.contexts("unknown/repo", "other").is_empty());
        assert!(map().inject("no-slash").is_err());
    }

    #[test]
    fn context_grammar() {
        let plain = Context::parse("fedora-44/devel");
        assert_eq!((plain.image.as_str(), plain.scenario.as_deref(), plain.repo), ("fedora-44", Some("devel"), None));
        let cross = Context::parse("unit-tests@cockpit-project/cockpituous");
        let spec = cross.repo.unwrap();
        assert_eq!(
            (spec.project.as_str(), spec.forge.as_str(), spec.branch),
            ("cockpit-project/cockpituous", "", None)
        );
        let forge = Context::parse("arch@codeberg:lis/test.thing/cockpit-ci").repo.unwrap();
        assert_eq!(
            (forge.project.as_str(), forge.forge.as_str(), forge.name.as_str(), forge.branch.as_deref()),
            ("codeberg:lis/test.thing", "codeberg", "lis/test.thing", Some("cockpit-ci"))
        );
        let bots = Context::parse("fedora-44@bots#1234");
        assert_eq!((bots.bots_pr, bots.repo), (Some(1234), None));
        let both = Context::parse("rhel-8-10/ws@bots#7@cockpit-project/cockpit/rhel-8");
        assert_eq!((both.test().as_str(), both.bots_pr), ("rhel-8-10/ws", Some(7)));
        assert_eq!(both.repo.unwrap().branch.as_deref(), Some("rhel-8"));
    }

    #[test]
    fn validity_of_existing_statuses() {
        let map = map();
        assert!(map.is_valid_context("fedora-44/other-scenario", "cockpit-project/cockpit"));
        assert!(map.is_valid_context("arch", "cockpit-project/cockpit"), "_manual counts");
        assert!(!map.is_valid_context("ubuntu-2204", "cockpit-project/cockpit"));
        assert!(map.is_valid_context("rhel-8-10@cockpit-project/cockpit/rhel-8", "cockpit-project/bots"));
        assert!(!map.is_valid_context("fedora-44@cockpit-project/cockpit/rhel-8", "cockpit-project/bots"));
        assert!(map.is_valid_context("arch@codeberg:lis/test.thing/cockpit-ci", "cockpit-project/bots"));
    }
}
