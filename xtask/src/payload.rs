//! `cargo xtask payload`: print a mocked GitHub event as the webhook would queue it, like
//! Cockpit's `mock-github --print-pr-event`, ready for `tasks publish-queue --queue webhook`.

use local::github::delivery::{self, PullView};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    event: Event,
}

#[derive(clap::Subcommand)]
enum Event {
    /// A `pull_request` event for a pull request against `main`.
    #[command(name = "pull_request")]
    PullRequest {
        /// The repository, OWNER/NAME.
        #[arg(long)]
        repo: String,
        /// The pull request's head commit.
        #[arg(long)]
        sha: String,
        /// The pull request's number.
        #[arg(long, default_value_t = 1)]
        number: u64,
        /// What happened: opened, synchronize, edited, closed, ...
        #[arg(long, default_value = "opened")]
        action: String,
        /// Where the repository is cloned from, without the OWNER/NAME part.
        #[arg(long, default_value = "https://github.com/")]
        clone_url: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Event::PullRequest { repo, sha, number, action, clone_url } = args.event;
    anyhow::ensure!(repo.split('/').count() == 2, "--repo must be OWNER/NAME, not {repo:?}");
    let owner = repo.split('/').next().unwrap_or_default();
    let pull = delivery::pull_json(&PullView {
        repo: &repo,
        clone_url: &clone_url,
        number,
        title: "mock PR",
        head_sha: &sha,
        base_sha: &sha,
        author: owner,
        state: if action == "closed" { "closed" } else { "open" },
        merged: false,
    });
    let event = delivery::pull_request(&action, &pull, &repo, &clone_url);
    println!("{}", String::from_utf8_lossy(&event.queue_message()));
    Ok(())
}
