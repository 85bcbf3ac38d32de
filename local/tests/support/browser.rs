//! Headless Chromium for the page tests, driven through ChromeDriver (Debian's `chromium` and
//! `chromium-driver`, which `cargo xtask ci` installs) with the `fantoccini` WebDriver client.
//! Each `Browser` has a ChromeDriver of its own on a free loopback port and a fresh profile;
//! dropping it stops the driver and the browser it started (one process group).

// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use local::child::ProcessGroup;
use serde_json::json;

/// How long a page may take to show what a test waits for. The log viewer polls every 5 s.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Chromium's flags for a machine with no network beyond loopback: without the
/// background-networking ones it keeps trying to reach Google's hosts.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
];

pub struct Browser {
    client: Client,
    _profile: tempfile::TempDir,
    _driver: ProcessGroup,
}

impl Browser {
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = local::free_port().unwrap();
        let mut driver = ProcessGroup::new();
        driver
            .spawn(Command::new("chromedriver").arg(format!("--port={port}")).arg("--log-level=WARNING"))
            .expect("chromedriver (Debian's chromium-driver; `cargo xtask ci` installs it)");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        // A dialog stays open ("ignore"), so that every command after it fails and says so,
        // rather than ChromeDriver dismissing it unseen.
        let capabilities = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new()).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => break client,
                // The driver is not listening yet.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(error) => panic!("no Chromium session from chromedriver at {url} within 20 s: {error}"),
            }
        };
        Browser { client, _profile: profile, _driver: driver }
    }

    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// The text of the first element `css` selects, or "" while there is none.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap(),
            Err(err) if err.is_no_such_element() => String::new(),
            Err(err) => panic!("reading {css}: {err} (a dialog open: {:?})", self.dialog().await),
        }
    }

    /// What `script` (a function body) returns in the page.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        match self.client.execute(script, Vec::new()).await {
            Ok(value) => value,
            Err(error) => match self.dialog().await {
                Some(text) => panic!("the page opened a dialog ({text:?}): script from its data ran"),
                None => panic!("running {script:?}: {error}"),
            },
        }
    }

    /// Waits until the text of `css` (none while it is not there) satisfies `wanted`; returns it.
    pub async fn wait_for_text(&self, css: &str, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let css = serde_json::to_string(css).expect("a string encodes");
        let script = format!("return document.querySelector({css})?.innerText ?? ''");
        let text = self.wait_for(&script, what, |text| wanted(text.as_str().unwrap_or_default())).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until what `script` returns satisfies `wanted`; returns it. Panics with the last
    /// value after `PATIENCE`.
    pub async fn wait_for(
        &self,
        script: &str,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script).await;
            if wanted(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "the page did not show {what} within {PATIENCE:?}; it shows {value}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether a dialog (`alert`, `confirm`, `prompt`) is open: what injected script shows first.
    pub async fn dialog(&self) -> Option<String> {
        self.client.get_alert_text().await.ok()
    }

    /// Saves a screenshot of the page as `<target>/tmp/screenshots/<name>.png` (kept after the
    /// run, beside the other artifacts) and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the WebDriver session (Chromium quits); the driver stops when the browser drops.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
