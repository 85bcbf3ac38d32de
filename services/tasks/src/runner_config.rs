//! job-runner's configuration, compatible with Cockpit's (cockpit-protocol.md 4.1, 4.2):
//! built-in defaults, then one TOML (or JSON) file merged over them as an RFC 7396 merge patch,
//! where `[{file = "PATH"}]` anywhere stands for the text of that file. Every key is honoured
//! or refused by name: nothing is read and then ignored. The same type is written back as TOML
//! ([`RunnerConfig::to_toml`]) by whoever prepares a worker, secrets as references to their
//! files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Cockpit's built-in `job-runner.toml`, the base every configuration is merged over.
const DEFAULTS: &str = r#"
[logs]
driver = "local"

[logs.s3]
url = "http://127.0.0.1:9000/tmp/"
key = { access = "minioadmin", secret = "minioadmin" }
acl = "public-read"
user-agent = "job-runner (cockpit-project/bots)"

[logs.local]
dir = "~/.cache/cockpit-dev/job-runner-logs"
link = "http://127.0.0.1:8000/"

[container]
command = ["podman"]
run-args = []
default-image = "ghcr.io/cockpit-project/tasks:latest"

[forge]
default = "github"

[limits]
log-size = "256m"
attachments = 5000
attachment-depth = 16
attachment-size = "256m"
attachments-size = "1g"

[forge.github]
driver = "github"
clone-url = "https://github.com/"
api-url = "https://api.github.com/"
post = false
user-agent = "job-runner (cockpit-project/bots)"

[forge.codeberg]
driver = "github"
clone-url = "https://codeberg.org/"
api-url = "https://codeberg.org/api/v1/"
post = false
user-agent = "job-runner (cockpit-project/bots)"
"#;

/// The user agent Cockpit's job-runner names itself with, the only one our GitHub client may
/// be given: octocrab names itself, and cannot be told otherwise.
pub const COCKPIT_USER_AGENT: &str = "job-runner (cockpit-project/bots)";

/// The merged configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunnerConfig {
    pub logs: Logs,
    pub container: Container,
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    #[serde(deserialize_with = "forges", serialize_with = "write_forges")]
    pub forge: Forges,
    pub limits: Limits,
    /// Keep the first job whose tests fail for inspection (`crate::hold`): a key of ours, for
    /// a developer's deployment (`run-local --hold-failed`), never production's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_failed: bool,
}

/// Bounds on what a job may leave behind: its log and its attachments (a table of ours;
/// Cockpit has none). A job's output past `log-size` is counted, not kept; attachments past the
/// others are not uploaded; either is said in the log. The defaults are far above what Cockpit's
/// projects write (logs of a few MB; screenshots, journals and coverage reports of a few hundred
/// MB at most) and far below what would fill a worker's disk or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    pub log_size: Size,
    /// How many files.
    pub attachments: u64,
    /// How many directories deep.
    pub attachment_depth: u32,
    pub attachment_size: Size,
    pub attachments_size: Size,
}

impl Limits {
    pub fn attachments(&self) -> crate::attachments::Limits {
        crate::attachments::Limits {
            files: self.attachments,
            depth: self.attachment_depth,
            file_size: self.attachment_size.0,
            total_size: self.attachments_size.0,
        }
    }
}

/// Bytes, written as a number or as podman writes sizes (`512k`, `256m`, `1g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(n) => {
                n.as_u64().map(Size).ok_or_else(|| serde::de::Error::custom(format!("{n} is not a size")))
            }
            Value::String(text) => crate::sandbox::size(&text)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .map(Size)
                .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a size"))),
            other => Err(serde::de::Error::custom(format!("{other} is not a size"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    pub driver: LogsDriver,
    pub s3: LogsS3,
    pub local: LogsLocal,
}

/// Where job logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogsDriver {
    /// An S3 store, `[logs.s3]`.
    S3,
    /// A directory of this machine, `[logs.local]` (Cockpit's default, for a developer).
    Local,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogsS3 {
    pub url: String,
    /// Cockpit spells this one key with an underscore.
    #[serde(rename = "proxy_url", skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    pub key: S3Key,
    /// `""` sends no `x-amz-acl` header.
    pub acl: String,
    /// PEM of the CA to trust for HTTPS to the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Sent with every request to the store.
    pub user_agent: String,
    /// Host names reached at these addresses rather than through the system's resolver, as an
    /// `/etc/hosts` of job-runner's own (a key of ours: a store named under `.localdomain`
    /// for Cockpit's tools, on a machine whose resolver does not know the name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolve: BTreeMap<String, std::net::IpAddr>,
}

/// `"ACCESS SECRET [TOKEN]"`, or a table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum S3Key {
    Text(String),
    Table { access: String, secret: String },
}

/// Logs written into `dir/<slug>/` (`~` is the home directory), linked from statuses as
/// `link<slug>/log.html`: what a web server serving `dir` at `link` shows.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogsLocal {
    pub dir: String,
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Container {
    pub command: Vec<String>,
    pub run_args: Vec<String>,
    pub default_image: String,
    /// Extra `run` arguments per secret a job may ask for, in configuration order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub secrets: IndexMap<String, Vec<String>>,
    /// Where jobs run (this project's key; Cockpit always uses containers).
    #[serde(default)]
    pub sandbox: SandboxKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// A podman container per job, through the podman API.
    #[default]
    Container,
    /// A child process on the host, for machines without podman.
    Process,
}

impl Container {
    /// The podman API socket: podman-remote's `--url=unix://PATH` in `command`, else rootful
    /// podman's default.
    pub fn socket(&self) -> PathBuf {
        self.command
            .iter()
            .find_map(|arg| arg.strip_prefix("--url=unix://"))
            .map_or_else(|| PathBuf::from("/run/podman/podman.sock"), PathBuf::from)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    #[serde(default)]
    pub external: BTreeMap<String, String>,
    #[serde(default)]
    pub inline: BTreeMap<String, Value>,
}

/// The forges by name, and which one jobs use unless they say.
#[derive(Debug, Clone, PartialEq)]
pub struct Forges {
    pub default: String,
    pub forges: BTreeMap<String, Forge>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Forge {
    pub driver: ForgeDriver,
    pub clone_url: String,
    pub api_url: String,
    pub post: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Cockpit's; any other is refused ([`COCKPIT_USER_AGENT`]).
    pub user_agent: String,
}

/// The API a forge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeDriver {
    /// GitHub's REST API (GitHub, and Forgejo's compatible subset: Codeberg).
    Github,
}

impl Secrets {
    fn is_empty(&self) -> bool {
        self.external.is_empty() && self.inline.is_empty()
    }

    /// The path of every secret `wanted` names: external ones as configured (`~` expanded),
    /// inline ones written under `dir` (a string as a file, a table as a directory of files),
    /// readable by their owner only. Secrets nobody asked for are not written.
    pub fn paths(&self, dir: &Path, wanted: &BTreeSet<String>) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let mut paths = BTreeMap::new();
        for (name, path) in self.external.iter().filter(|(name, _)| wanted.contains(*name)) {
            let path = match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
                (Some(rest), Some(home)) => Path::new(&home).join(rest),
                _ => PathBuf::from(path),
            };
            paths.insert(name.clone(), path);
        }
        let private_dir = |path: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|source| ConfigError::Write { path: path.to_owned(), source })
        };
        let write = |path: &Path, text: &str| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
                .map_err(|source| ConfigError::Write { path: path.to_owned(), source })
        };
        for (name, value) in &self.inline {
            if self.external.contains_key(name) {
                return Err(ConfigError::Invalid(format!("secret {name:?} is both external and inline")));
            }
            if !wanted.contains(name) {
                continue;
            }
            private_dir(dir)?;
            let path = dir.join(name);
            match value {
                Value::String(text) => write(&path, text)?,
                Value::Object(files) => {
                    private_dir(&path)?;
                    for (file, text) in files {
                        write(&path.join(file), text.as_str().unwrap_or_default())?;
                    }
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "inline secret {name:?} is neither a string nor a table"
                    )));
                }
            }
            paths.insert(name.clone(), path);
        }
        Ok(paths)
    }
}

/// The key `default` directly under `[forge]` is not a forge.
fn forges<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Forges, D::Error> {
    let table = Map::<String, Value>::deserialize(deserializer)?;
    let default = table.get("default").and_then(Value::as_str).unwrap_or("github").to_owned();
    let mut forges = BTreeMap::new();
    for (name, value) in table {
        if name != "default" {
            let forge =
                Forge::deserialize(value).map_err(|err| serde::de::Error::custom(format!("[forge.{name}]: {err}")))?;
            forges.insert(name, forge);
        }
    }
    Ok(Forges { default, forges })
}

fn write_forges<S: serde::Serializer>(forges: &Forges, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(forges.forges.len() + 1))?;
    map.serialize_entry("default", &forges.default)?;
    for (name, forge) in &forges.forges {
        map.serialize_entry(name, forge)?;
    }
    map.end()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Configuration error: cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("Configuration error: {} is not valid {format}: {detail}", path.display())]
    Syntax { path: PathBuf, format: &'static str, detail: String },
    #[error("Configuration error: cannot write the secret {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("Configuration error: {0}")]
    Invalid(String),
}

/// The syntax of a job-runner configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl RunnerConfig {
    /// The defaults with `file` (TOML, or JSON if it ends in `.json`) merged over them.
    pub fn load(file: Option<&Path>) -> Result<RunnerConfig, ConfigError> {
        let Some(path) = file else {
            return RunnerConfig::parse("", Format::Toml, |file| Err(ConfigError::Invalid(format!("no file {file}"))));
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let format = if path.extension().is_some_and(|ext| ext == "json") { Format::Json } else { Format::Toml };
        let base = path.parent().unwrap_or(Path::new("."));
        RunnerConfig::parse(&text, format, |file| {
            let path = base.join(file);
            std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })
        })
        .map_err(|err| match err {
            ConfigError::Syntax { format, detail, .. } => ConfigError::Syntax { path: path.to_owned(), format, detail },
            err => err,
        })
    }

    /// The defaults with `text` merged over them, each `[{file = "PATH"}]` replaced by what
    /// `read` returns for PATH.
    pub fn parse(
        text: &str,
        format: Format,
        read: impl Fn(&str) -> Result<String, ConfigError>,
    ) -> Result<RunnerConfig, ConfigError> {
        let mut merged = toml::from_str::<Value>(DEFAULTS).expect("the built-in defaults are valid");
        let syntax = |format, detail: String| ConfigError::Syntax { path: PathBuf::new(), format, detail };
        let mut patch: Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| syntax("JSON", e.to_string()))?,
            Format::Toml => toml::from_str(text).map_err(|e| syntax("TOML", e.to_string()))?,
        };
        resolve_files(&mut patch, &read)?;
        merge_patch(&mut merged, patch);
        let config: RunnerConfig = serde_json::from_value(merged).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, forge) in &config.forge.forges {
            if forge.post && forge.token.is_none() {
                return Err(ConfigError::Invalid(format!("[forge.{name}] post = true needs a token")));
            }
            if forge.user_agent != COCKPIT_USER_AGENT {
                return Err(ConfigError::Invalid(format!(
                    "[forge.{name}] user-agent {:?}: the GitHub client names itself; remove the key",
                    forge.user_agent
                )));
            }
        }
        Ok(config)
    }

    /// The configuration as a TOML file that [`RunnerConfig::load`] reads back the same, but
    /// for the keys of `from_files` (each a path of keys, such as `["forge", "github",
    /// "token"]`): they are written as `[{file = "PATH"}]`, so that a secret stays in its file.
    pub fn to_toml(&self, from_files: &[(&[&str], &Path)]) -> String {
        let mut value = serde_json::to_value(self).expect("a configuration is representable in JSON");
        for (keys, file) in from_files {
            let (last, tables) = keys.split_last().expect("a path of at least one key");
            let mut table = &mut value;
            for key in tables {
                table = table.as_object_mut().and_then(|t| t.get_mut(*key)).expect("a table of the configuration");
            }
            let reference = serde_json::json!([{"file": file.display().to_string()}]);
            table.as_object_mut().expect("a table of the configuration").insert((*last).to_owned(), reference);
        }
        toml::to_string(&value).expect("a configuration is representable in TOML")
    }
}

/// Replaces every `[{file = "PATH"}]` by what `read` returns for PATH.
fn resolve_files(value: &mut Value, read: &impl Fn(&str) -> Result<String, ConfigError>) -> Result<(), ConfigError> {
    if let Value::Array(items) = value
        && let [Value::Object(table)] = items.as_slice()
        && table.len() == 1
        && let Some(Value::String(file)) = table.get("file")
    {
        *value = Value::String(read(file)?);
        return Ok(());
    }
    match value {
        Value::Object(table) => table.values_mut().try_for_each(|v| resolve_files(v, read)),
        Value::Array(items) => items.iter_mut().try_for_each(|v| resolve_files(v, read)),
        _ => Ok(()),
    }
}

/// RFC 7396: tables merge recursively, anything else replaces, `null` deletes.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let table = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            table.remove(&key);
        } else {
            merge_patch(table.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_cockpits() {
        let config = RunnerConfig::load(None).unwrap();
        assert_eq!(config.logs.driver, LogsDriver::Local);
        assert_eq!(config.logs.s3.acl, "public-read");
        assert_eq!(config.container.command, ["podman"]);
        assert_eq!(config.container.default_image, "ghcr.io/cockpit-project/tasks:latest");
        assert_eq!(config.forge.default, "github");
        assert_eq!(config.forge.forges.keys().collect::<Vec<_>>(), ["codeberg", "github"]);
        assert!(!config.forge.forges["github"].post);
        assert_eq!(
            config.limits,
            Limits {
                log_size: Size(256 << 20),
                attachments: 5000,
                attachment_depth: 16,
                attachment_size: Size(256 << 20),
                attachments_size: Size(1 << 30),
            }
        );
        let small = RunnerConfig::parse(
            "[limits]\nlog-size = 1000\nattachment-size = \"2k\"",
            Format::Toml,
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!((small.limits.log_size, small.limits.attachment_size), (Size(1000), Size(2048)));
        let resolving = "[logs.s3]\nresolve = { \"localhost.localdomain\" = \"127.0.0.1\" }";
        let resolving = RunnerConfig::parse(resolving, Format::Toml, |_| unreachable!()).unwrap();
        assert_eq!(resolving.logs.s3.resolve["localhost.localdomain"], std::net::Ipv4Addr::LOCALHOST);
        let bad = RunnerConfig::parse("[limits]\nlog-size = \"lots\"", Format::Toml, |_| unreachable!());
        assert!(bad.unwrap_err().to_string().contains("\"lots\" is not a size"));
    }

    /// The configuration of Cockpit's own integration test, files and all.
    #[test]
    fn cockpits_integration_test_configuration() {
        let dir = std::env::temp_dir().join(format!("runner-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("s3-keys")).unwrap();
        std::fs::write(dir.join("token"), "0123abc\n").unwrap();
        std::fs::write(dir.join("s3-keys/localhost"), "cockpituous foobarfoo\n").unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let file = dir.join("job-runner.toml");
        std::fs::write(
            &file,
            r#"
[logs]
driver = 's3'
[forge.github]
token = [{file="token"}]
post = true
api-url = "http://127.0.0.7:8443"
[logs.s3]
url = 'https://localhost:9000/logs'
proxy_url = "https://logs.example.com/"
ca = [{file='ca.pem'}]
key = [{file="s3-keys/localhost"}]
[container]
command = ['podman-remote', '--url=unix:///podman.sock']
run-args = ['--security-opt=label=disable', '--pod=cockpituous']
[container.secrets]
image-upload = ['--volume=/run/secrets/s3-keys:/run/secrets/s3-keys:ro', '--env=COCKPIT_S3_KEY_DIR=/run/secrets/s3-keys']
github-token = ['--volume=/run/secrets/webhook/.config--github-token:/run/secrets/github-token:ro']
"#,
        )
        .unwrap();
        let config = RunnerConfig::load(Some(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(config.logs.driver, LogsDriver::S3);
        assert_eq!(config.logs.s3.url, "https://localhost:9000/logs");
        assert_eq!(config.logs.s3.proxy_url.as_deref(), Some("https://logs.example.com/"));
        assert_eq!(config.logs.s3.key, S3Key::Text("cockpituous foobarfoo\n".into()));
        assert_eq!(config.logs.s3.ca.as_deref(), Some("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(config.logs.s3.acl, "public-read", "untouched defaults stay");
        assert!(config.logs.s3.resolve.is_empty());
        let github = &config.forge.forges["github"];
        assert_eq!(
            (github.token.as_deref(), github.post, github.api_url.as_str()),
            (Some("0123abc\n"), true, "http://127.0.0.7:8443")
        );
        assert_eq!(github.clone_url, "https://github.com/", "merged, not replaced");
        assert_eq!(config.container.command, ["podman-remote", "--url=unix:///podman.sock"]);
        assert_eq!(
            config.container.secrets.keys().collect::<Vec<_>>(),
            ["image-upload", "github-token"],
            "config order"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("runner-config-errors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let post_without_token = dir.join("a.toml");
        std::fs::write(&post_without_token, "[forge.github]\npost = true\n").unwrap();
        let err = RunnerConfig::load(Some(&post_without_token)).unwrap_err().to_string();
        assert_eq!(err, "Configuration error: [forge.github] post = true needs a token");
        let missing_file = dir.join("b.toml");
        std::fs::write(&missing_file, "[logs.s3]\nkey = [{file='nope'}]\n").unwrap();
        let err = RunnerConfig::load(Some(&missing_file)).unwrap_err().to_string();
        assert!(err.starts_with("Configuration error: cannot read ") && err.contains("nope"), "{err}");
        let json = dir.join("c.json");
        std::fs::write(&json, r#"{"logs": {"driver": "s3", "s3": {"acl": ""}}, "forge": {"codeberg": null}}"#).unwrap();
        let config = RunnerConfig::load(Some(&json)).unwrap();
        assert_eq!((config.logs.driver, config.logs.s3.acl.as_str()), (LogsDriver::S3, ""));
        assert!(!config.forge.forges.contains_key("codeberg"), "null deletes");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What we do not do is refused by name, not read and ignored.
    #[test]
    fn settings_we_do_not_honour_are_refused_by_name() {
        let refused = |text: &str| RunnerConfig::parse(text, Format::Toml, |_| unreachable!()).unwrap_err().to_string();
        let err = refused("[logs]\ndriver = 'gcs'\n");
        assert!(err.contains("unknown variant `gcs`, expected `s3` or `local`"), "{err}");
        let err = refused("[forge.github]\ndriver = 'gitlab'\n");
        assert!(err.contains("[forge.github]") && err.contains("unknown variant `gitlab`"), "{err}");
        let err = refused("[forge.github]\nca = 'PEM'\n");
        assert!(err.contains("[forge.github]") && err.contains("unknown field `ca`"), "{err}");
        let err = refused("[forge.github]\nuser-agent = 'me'\n");
        assert_eq!(
            err,
            "Configuration error: [forge.github] user-agent \"me\": the GitHub client names itself; remove the key"
        );
        let err = refused("[logs.s3]\nurl = 'https://x/logs'\nregion = 'eu'\n");
        assert!(err.contains("unknown field `region`"), "{err}");
        let err = refused("[container]\nnetwork = 'host'\n");
        assert!(err.contains("unknown field `network`"), "{err}");
    }

    /// What a worker's preparer writes is what the worker reads.
    #[test]
    fn a_configuration_written_as_toml_reads_back_the_same() {
        let mut config = RunnerConfig::load(None).unwrap();
        config.logs.driver = LogsDriver::S3;
        config.logs.s3.url = "https://localhost.localdomain:9000/logs".into();
        config.logs.s3.key = S3Key::Text("ACCESS SECRET".into());
        config.logs.s3.ca = Some("-----BEGIN CERTIFICATE-----\n".into());
        config.logs.s3.proxy_url = Some("https://localhost:9000/logs".into());
        config.logs.s3.resolve = [("localhost.localdomain".to_owned(), std::net::Ipv4Addr::LOCALHOST.into())].into();
        config.container.sandbox = SandboxKind::Process;
        config.container.secrets.insert("image-upload".into(), vec!["--env=A=%{image-upload}".into()]);
        config.secrets.inline.insert("image-upload".into(), Value::String("secret".into()));
        let github = config.forge.forges.get_mut("github").unwrap();
        (github.post, github.token) = (true, Some("token".into()));
        let text = config.to_toml(&[]);
        let read = RunnerConfig::parse(&text, Format::Toml, |_| unreachable!()).unwrap();
        assert_eq!(read, config, "{text}");
        // A secret written as a reference to its file is read from it.
        let text = config.to_toml(&[(&["forge", "github", "token"], Path::new("/secrets/token"))]);
        assert!(
            text.contains("[[forge.github.token]]\nfile = \"/secrets/token\"") && !text.contains("\"token\""),
            "{text}"
        );
        let read = RunnerConfig::parse(&text, Format::Toml, |file| {
            assert_eq!(file, "/secrets/token");
            Ok("from the file".into())
        })
        .unwrap();
        assert_eq!(read.forge.forges["github"].token.as_deref(), Some("from the file"));
    }
}
