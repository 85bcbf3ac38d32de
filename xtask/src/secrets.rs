//! `cargo xtask secrets`: fresh fake credentials in Cockpit's production layout.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write (created; refused if it exists and is not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace the secrets in an existing directory.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (secrets, _) = local::secrets::generate(&args.out, args.force)
        .with_context(|| format!("generating secrets into {}", args.out.display()))?;
    println!("wrote fake secrets to {}", secrets.root().display());
    println!("  webhook/     mount at /run/secrets/webhook (AMQP certificates, GitHub tokens)");
    println!("  s3-keys/     COCKPIT_S3_KEY_DIR");
    println!("  s3-server/   the S3 store's certificate");
    println!("  ca.pem       the fake CA (its key, ca.key, stays here: mount only the directories above)");
    Ok(())
}
