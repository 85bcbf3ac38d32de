//! The tasks worker, speaking Cockpit's protocol: tests-scan's decisions, the test map, the
//! job runner and its sandboxes, and the worker loop. The `tasks` binary wires them to the
//! broker and GitHub.

pub mod attachments;
pub mod container;
pub mod hold;
pub mod job;
pub mod job_runner;
pub mod log_store;
pub mod log_stream;
pub mod metrics;
pub mod queue_tools;
pub mod run_queue;
pub mod runner_config;
pub mod sandbox;
pub mod scan;
pub mod status;
pub mod testmap;
pub mod tests_scan;
