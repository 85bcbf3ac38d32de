//! `webhook`: the GitHub webhook receiver, configured like Cockpit's.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Receives GitHub webhook deliveries, verifies their signature, and publishes the ones CI acts
/// on (pull requests opened, synchronized, edited or merged; direct-trigger statuses) to the
/// durable AMQP queue `webhook`. Answers 200 only once the broker confirmed storing the message,
/// 503 with Retry-After while it cannot.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Broker address: host:port (TLS with a client certificate), or `localhost` for plain AMQP
    /// on port 5672 with the guest user.
    #[arg(long, env = "AMQP_SERVER", default_value = "localhost:5671")]
    amqp: String,
    /// Directory with ca.pem, amqp-client.pem and amqp-client.key
    /// [default: /run/secrets/webhook, or $XDG_RUNTIME_DIR/secrets/webhook if only that exists]
    #[arg(long, env = "WORKBENCH_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// File holding the HMAC secret GitHub signs deliveries with
    /// [default: ~/.config/github-webhook-token]
    #[arg(long, env = "COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE")]
    secret_file: Option<PathBuf>,
    /// Address to listen on (0.0.0.0:8080 inside a pod; port 0 for any free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Write the address listened on to FILE once listening: with port 0, the port it got.
    #[arg(long, value_name = "FILE")]
    address_file: Option<PathBuf>,
    /// The Prometheus that scrapes this deployment, linked from the status page.
    #[arg(long, env = "WORKBENCH_PROMETHEUS_URL", value_name = "URL")]
    prometheus_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _traces = traces::init("webhook", "info");
    let args = Args::parse();
    let address = args.amqp.parse().context("AMQP_SERVER / --amqp")?;
    let secrets_dir = args.secrets_dir.unwrap_or_else(amqp::default_secrets_dir);
    let secret_file = match args.secret_file {
        Some(path) => path,
        None => {
            std::env::home_dir().context("no home directory: pass --secret-file")?.join(".config/github-webhook-token")
        }
    };
    let secret = webhook::read_secret(&secret_file).with_context(|| {
        format!(
            "cannot read the webhook secret {}: set COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE or pass --secret-file",
            secret_file.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another webhook running? pass --listen", args.listen))?;
    let listening = listener.local_addr().context("reading the address listened on")?;
    if let Some(file) = &args.address_file {
        webhook::write_address(file, listening)?;
    }
    tracing::info!(listen = %listening, amqp = %address, "webhook ready");
    let config = webhook::Config {
        prometheus: args.prometheus_url,
        ..webhook::Config::new(amqp::Config::new(address, &secrets_dir), secret)
    };
    // SIGTERM or SIGINT: stop accepting, drain, exit.
    webhook::serve(listener, config, shutdown::requested()).await.context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}
