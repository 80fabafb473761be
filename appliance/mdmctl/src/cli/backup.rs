//! Encrypted backups of the whole appliance: `mdmctl backup ...`.
//!
//! The passphrase is never an argument: an argument stays in shell history and shows in `ps`.
//! It is asked for on the terminal, or read from a file or a pipe.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `mdmctl backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Make an encrypted backup of the whole appliance and write it to a file. The
    /// passphrase is asked for twice on the terminal unless --passphrase-file or
    /// --passphrase-stdin gives it; the appliance's writes wait while its database is copied
    Create(BackupCreate),
}

/// Arguments of `backup create`.
#[derive(Debug, Args)]
pub struct BackupCreate {
    /// Where to write the backup, e.g. appliance-2025-03-01.mdmbackup (written as
    /// FILE.partial first, readable only by you, and renamed when complete)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Read the passphrase from the first line of this file (only the line break at its end
    /// is removed)
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_stdin")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from the first line of standard input (a pipe or a file, not a
    /// terminal)
    #[arg(long)]
    pub passphrase_stdin: bool,
    /// Replace FILE if it exists
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, Cli};
    use clap::error::ErrorKind;
    use clap::Parser as _;

    fn backup(args: &[&str]) -> Result<BackupCommand, clap::Error> {
        let all = ["mdmctl", "backup"].iter().chain(args).copied();
        match Cli::try_parse_from(all)?.command {
            Action::Backup { command } => Ok(command),
            other => panic!("not a backup command: {other:?}"),
        }
    }

    #[test]
    fn create_needs_a_file_and_takes_one_passphrase_source() {
        let BackupCommand::Create(c) = backup(&["create", "--out", "a.mdmbackup"]).expect("parse");
        assert_eq!(c.out, PathBuf::from("a.mdmbackup"));
        assert!(c.passphrase_file.is_none() && !c.passphrase_stdin && !c.force);

        let BackupCommand::Create(c) = backup(&[
            "create",
            "--out",
            "a.mdmbackup",
            "--passphrase-file",
            "pass.txt",
            "--force",
        ])
        .expect("parse");
        assert_eq!(c.passphrase_file, Some(PathBuf::from("pass.txt")));
        assert!(c.force);

        let err = backup(&["create"]).expect_err("no --out");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = backup(&[
            "create",
            "--out",
            "a",
            "--passphrase-file",
            "p",
            "--passphrase-stdin",
        ])
        .expect_err("both sources");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_passphrase_argument_is_refused_without_repeating_it() {
        for args in [
            &[
                "create",
                "--out",
                "a",
                "--passphrase",
                "hunter2-secret-value",
            ][..],
            &["create", "--out", "a", "--passphrase=hunter2-secret-value"],
        ] {
            let err = backup(args).expect_err("no such argument");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.render().to_string();
            assert!(!text.contains("hunter2"), "{args:?}: {text}");
        }
    }
}
