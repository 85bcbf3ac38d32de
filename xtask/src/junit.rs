//! run-local's results as JUnit XML (`--junit FILE`), the form CI systems read test results
//! in: one test case per scenario; a failure carries its message and the services' log tails.
//! The layout is the one Jenkins, GitLab and the JUnit-reading GitHub actions agree on
//! (`testsuites` > `testsuite` > `testcase`, with `failure` or `skipped`).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// How one test case ended.
pub enum Verdict {
    Passed,
    Skipped(String),
    /// Why, and what to look at (log tails).
    Failed {
        message: String,
        detail: String,
    },
}

/// One test case: a scenario, or the deployment's start when it did not come up.
pub struct Case {
    pub name: String,
    pub seconds: f64,
    pub verdict: Verdict,
}

#[derive(Serialize)]
#[serde(rename = "testsuites")]
struct TestSuites {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@tests")]
    tests: usize,
    #[serde(rename = "@failures")]
    failures: usize,
    #[serde(rename = "@skipped")]
    skipped: usize,
    #[serde(rename = "@time")]
    time: String,
    testsuite: TestSuite,
}

#[derive(Serialize)]
struct TestSuite {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@tests")]
    tests: usize,
    #[serde(rename = "@failures")]
    failures: usize,
    #[serde(rename = "@errors")]
    errors: usize,
    #[serde(rename = "@skipped")]
    skipped: usize,
    #[serde(rename = "@time")]
    time: String,
    testcase: Vec<TestCase>,
}

#[derive(Serialize)]
struct TestCase {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@classname")]
    classname: String,
    #[serde(rename = "@time")]
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<Skipped>,
}

#[derive(Serialize)]
struct Failure {
    #[serde(rename = "@message")]
    message: String,
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "$text")]
    detail: String,
}

#[derive(Serialize)]
struct Skipped {
    #[serde(rename = "@message")]
    message: String,
}

/// The document for `cases` of a run on `runtime` that took `seconds`.
pub fn to_xml(runtime: &str, seconds: f64, cases: &[Case]) -> anyhow::Result<String> {
    let failures = cases.iter().filter(|c| matches!(c.verdict, Verdict::Failed { .. })).count();
    let skipped = cases.iter().filter(|c| matches!(c.verdict, Verdict::Skipped(_))).count();
    let time = format!("{seconds:.3}");
    let testcase = cases
        .iter()
        .map(|case| {
            let (failure, skipped) = match &case.verdict {
                Verdict::Passed => (None, None),
                Verdict::Skipped(reason) => (None, Some(Skipped { message: reason.clone() })),
                Verdict::Failed { message, detail } => {
                    (Some(Failure { message: message.clone(), kind: "assertion", detail: detail.clone() }), None)
                }
            };
            TestCase {
                name: case.name.clone(),
                classname: format!("run-local.{runtime}"),
                time: format!("{:.3}", case.seconds),
                failure,
                skipped,
            }
        })
        .collect();
    let suites = TestSuites {
        name: "run-local",
        tests: cases.len(),
        failures,
        skipped,
        time: time.clone(),
        testsuite: TestSuite {
            name: format!("run-local ({runtime})"),
            tests: cases.len(),
            failures,
            errors: 0,
            skipped,
            time,
            testcase,
        },
    };
    let body = quick_xml::se::to_string(&suites).context("writing JUnit XML")?;
    Ok(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}\n"))
}

/// Writes the document to `path`.
pub fn write(path: &Path, runtime: &str, seconds: f64, cases: &[Case]) -> anyhow::Result<()> {
    std::fs::write(path, to_xml(runtime, seconds, cases)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_per_scenario_with_failures_and_skips_counted() {
        let cases = [
            Case { name: "queue".into(), seconds: 0.25, verdict: Verdict::Passed },
            Case { name: "kvm".into(), seconds: 0.0, verdict: Verdict::Skipped("no /dev/kvm".into()) },
            Case {
                name: "pr-success".into(),
                seconds: 1.5,
                verdict: Verdict::Failed {
                    message: "expected \"success\", got <failure> & more".into(),
                    detail: "worker-1 (log), last lines:\n</testcase> ]]> & <script>".into(),
                },
            },
        ];
        let xml = to_xml("process", 3.0, &cases).unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <testsuites name=\"run-local\" tests=\"3\" failures=\"1\" skipped=\"1\" time=\"3.000\">\
             <testsuite name=\"run-local (process)\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"3.000\">\
             <testcase name=\"queue\" classname=\"run-local.process\" time=\"0.250\"/>\
             <testcase name=\"kvm\" classname=\"run-local.process\" time=\"0.000\"><skipped message=\"no /dev/kvm\"/></testcase>\
             <testcase name=\"pr-success\" classname=\"run-local.process\" time=\"1.500\">\
             <failure message=\"expected &quot;success&quot;, got &lt;failure&gt; &amp; more\" type=\"assertion\">\
             worker-1 (log), last lines:\n&lt;/testcase&gt; ]]&gt; &amp; &lt;script&gt;</failure></testcase>\
             </testsuite></testsuites>\n"
        );
        // What a JUnit reader gets back: the texts as they were.
        #[derive(serde::Deserialize)]
        struct Read {
            testsuite: ReadSuite,
        }
        #[derive(serde::Deserialize)]
        struct ReadSuite {
            testcase: Vec<ReadCase>,
        }
        #[derive(serde::Deserialize)]
        struct ReadCase {
            failure: Option<ReadFailure>,
        }
        #[derive(serde::Deserialize)]
        struct ReadFailure {
            #[serde(rename = "@message")]
            message: String,
            #[serde(rename = "$text")]
            text: String,
        }
        let read: Read = quick_xml::de::from_str(&xml).unwrap();
        let failure = read.testsuite.testcase[2].failure.as_ref().unwrap();
        assert_eq!(failure.message, "expected \"success\", got <failure> & more");
        assert_eq!(failure.text, "worker-1 (log), last lines:\n</testcase> ]]> & <script>");
    }
}
