//! `osteo token new`: a random bearer token for a principal, its SHA-256 entry appended to the
//! server's tokens file (the file never holds a token), the token printed once.

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use osteo_server::auth::{Authenticator, token_digest, valid_principal};
use std::io::Write;
use std::path::PathBuf;

/// A role a token grants.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Upload, classify, explain, compare; read and delete its own studies.
    Client,
    /// List models; read and delete any principal's studies.
    Admin,
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a principal, append its digest to the tokens file, print the token
    /// on the last line of stdout (it is not stored anywhere: keep it).
    New {
        /// The principal the token authenticates (1 to 64 letters, digits or ._@-).
        #[arg(long)]
        principal: String,
        /// The role it grants.
        #[arg(long, value_enum, default_value = "client")]
        role: RoleArg,
        /// The server's auth.tokens_file (created if missing).
        #[arg(long, value_name = "FILE")]
        tokens_file: PathBuf,
    },
}

/// Runs a token command.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::New {
        principal,
        role,
        tokens_file,
    } = cmd;
    if !valid_principal(&principal) {
        bail!("--principal must be 1 to 64 letters, digits or ._@-");
    }
    if tokens_file.exists() {
        // Never append to a file the server would refuse.
        Authenticator::from_tokens_file(&tokens_file)?;
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = std::iter::once("ost_".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let role = match role {
        RoleArg::Client => "client",
        RoleArg::Admin => "admin",
    };
    let entry = format!(
        "\n[[tokens]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\nroles = [\"{role}\"]\n",
        token_digest(&token)
    );
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tokens_file)
        .with_context(|| format!("cannot open {}", tokens_file.display()))?;
    file.write_all(entry.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tokens_file.display()))?;
    Authenticator::from_tokens_file(&tokens_file)?;
    println!(
        "appended principal {principal} (role {role}) to {}; the token is shown once:",
        tokens_file.display()
    );
    println!("{token}");
    Ok(())
}
