//! The alert rules users deploy (`deploy/prometheus/alerts.yml`), checked with Prometheus' own
//! tool: `promtool check rules`, `promtool check config` of the production scrape
//! configuration (`kubernetes.yml`), then `promtool test rules` of `alerts_test.yml`, where every
//! alert has a case in which it fires and one in which it stays quiet (a test below keeps it so).

use std::process::Command;

use anyhow::{Context, bail};

use crate::packages::{self, PROMETHEUS};

/// Checks and unit-tests the alert rules with promtool (installed with Debian's `prometheus`).
pub fn check() -> anyhow::Result<()> {
    packages::ensure(&[PROMETHEUS])?;
    let dir = crate::workspace::root().join("deploy/prometheus");
    // The production scrape configuration names the rules: its check loads them too.
    for args in
        [["check", "rules", "alerts.yml"], ["check", "config", "kubernetes.yml"], ["test", "rules", "alerts_test.yml"]]
    {
        let status = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .status()
            .with_context(|| format!("running promtool {}", args.join(" ")))?;
        if !status.success() {
            bail!("promtool {} failed in {}: see its output above", args.join(" "), dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[derive(serde::Deserialize)]
    struct Rules {
        groups: Vec<Group>,
    }
    #[derive(serde::Deserialize)]
    struct Group {
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    struct Rule {
        alert: String,
        annotations: BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Tests {
        tests: Vec<Test>,
    }
    #[derive(serde::Deserialize)]
    struct Test {
        alert_rule_test: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        alertname: String,
        exp_alerts: Vec<serde_norway::Value>,
    }

    /// Every alert has a summary and a description, and a promtool case where it fires and
    /// one where it does not; no case tests an alert that is not there.
    #[test]
    fn every_alert_has_a_firing_and_a_quiet_case() {
        let dir = crate::workspace::root().join("deploy/prometheus");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let rules: Rules = serde_norway::from_str(&read("alerts.yml")).unwrap();
        let tests: Tests = serde_norway::from_str(&read("alerts_test.yml")).unwrap();
        let cases: Vec<&Case> = tests.tests.iter().flat_map(|test| &test.alert_rule_test).collect();
        let alerts: Vec<&Rule> = rules.groups.iter().flat_map(|group| &group.rules).collect();
        assert!(alerts.len() >= 7, "the issue's seven kinds of trouble at least");
        for rule in &alerts {
            for annotation in ["summary", "description"] {
                assert!(rule.annotations.contains_key(annotation), "{} has no {annotation}", rule.alert);
            }
            let of_rule = || cases.iter().filter(|case| case.alertname == rule.alert);
            assert!(of_rule().any(|case| !case.exp_alerts.is_empty()), "no case where {} fires", rule.alert);
            assert!(of_rule().any(|case| case.exp_alerts.is_empty()), "no case where {} stays quiet", rule.alert);
        }
        for case in &cases {
            assert!(alerts.iter().any(|rule| rule.alert == case.alertname), "no alert {}", case.alertname);
        }
    }
}
