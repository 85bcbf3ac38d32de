//! The local deployment: everything `cargo xtask run-local` starts around the production
//! services. Fake secrets, the private broker, and the processes they run as.

pub mod broker;
pub mod bundle;
pub mod chaos;
pub mod child;
pub mod client;
pub mod deployment;
pub mod github;
pub mod hosts;
pub mod images;
pub mod kube;
pub mod launch;
pub mod link;
pub mod pod;
pub mod podman;
pub mod prometheus;
pub mod report;
pub mod s3_server;
pub mod scenario;
pub mod secrets;
pub mod service;
pub mod trace;
pub mod worker;

mod port;

pub use broker::{Broker, BrokerError};
pub use deployment::{Deployment, Endpoints};
pub use github::{Delivery, MockGitHub};
pub use launch::Binaries;
pub use podman::{PodmanConfig, PodmanError, PodmanService};
pub use port::free_port;
pub use s3_server::S3Server;
pub use secrets::{Ca, Issued, Secrets, SecretsError};
