//! `osteo audit verify`: checks the hash chain of a server's audit log.

use clap::Subcommand;
use std::path::PathBuf;

/// Audit-log commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that no line of an audit log was changed, removed or reordered (exit 0), or name
    /// the first line that breaks the chain (exit 2).
    Verify {
        /// The audit log (JSON lines, `audit.path` of the server).
        file: PathBuf,
    },
}

/// Runs an audit command.
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { file } => {
            let n = osteo_server::audit::verify(&file)?;
            println!("{}: {n} records, chain intact", file.display());
            Ok(())
        }
    }
}
