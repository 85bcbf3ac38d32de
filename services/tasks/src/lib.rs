//! The tasks worker, speaking Cockpit's protocol: tests-scan's decisions, the test map, and the
//! queue tools. The `tasks` binary wires them to the broker and GitHub.

pub mod job;
pub mod log_stream;
pub mod run_queue;
pub mod runner_config;
pub mod scan;
pub mod testmap;
pub mod tests_scan;
