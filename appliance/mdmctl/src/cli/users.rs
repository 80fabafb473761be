//! Local user accounts: `mdmctl users ...`.
//!
//! Passwords are never arguments: an argument stays in shell history and shows in `ps`.
//! `--password` takes no value and asks on the terminal; `--password-stdin` reads a pipe.

use clap::{ArgGroup, Args, Subcommand};

/// `mdmctl users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List accounts in username order, one page at a time (or all of them with --all)
    List {
        /// Page size (1 to 1000); the appliance default (100) if absent
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: Option<u64>,
        /// Start after this username (the `next` of the previous page)
        #[arg(long, value_name = "USERNAME")]
        after: Option<String>,
        /// Fetch every page
        #[arg(long)]
        all: bool,
    },
    /// Show one account: whether it may sign in, lockout, failed and last sign-ins
    Show {
        /// Username (case-insensitive)
        user: String,
    },
    /// Create an account; its password is asked for on the terminal, typed twice, or read
    /// from standard input when that is not a terminal
    Add(UserAdd),
    /// Change an account's name, email or password, or whether it may sign in
    Set(UserSet),
    /// Delete an account (devices enrolled for it keep its name)
    Remove {
        /// Username (case-insensitive)
        user: String,
    },
    /// Lift a lockout after failed sign-ins and clear the failure count
    Unlock {
        /// Username (case-insensitive)
        user: String,
    },
}

/// What clap keeps of a value given to `--password`: nothing but the fact that there was
/// one, so the text can reach no message, and the command refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordValueGiven;

/// The value parser of `--password`: accepts anything so that clap never quotes it back in
/// an "invalid value" error, and forgets it.
fn forget_value(_: &str) -> Result<PasswordValueGiven, std::convert::Infallible> {
    Ok(PasswordValueGiven)
}

/// Where a password comes from.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Ask for the password on the terminal, typed twice without echo. Takes no value:
    /// passwords are never taken as arguments
    #[arg(
        long,
        num_args = 0..=1,
        value_name = "NO VALUE",
        value_parser = forget_value,
        conflicts_with = "password_stdin"
    )]
    pub password: Option<Option<PasswordValueGiven>>,
    /// Read the password from the first line of standard input (a pipe or a file, not a
    /// terminal); only the line break at its end is removed
    #[arg(long)]
    pub password_stdin: bool,
}

impl PasswordArgs {
    /// Whether `--password` was given with a value (which is refused).
    pub fn value_given(&self) -> bool {
        matches!(self.password, Some(Some(PasswordValueGiven)))
    }

    /// Whether `--password` was given (with or without a value).
    pub fn prompt(&self) -> bool {
        self.password.is_some()
    }
}

/// Arguments of `users add`.
#[derive(Debug, Args)]
pub struct UserAdd {
    /// Sign-in name: 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or
    /// digit; stored lowercase
    pub username: String,
    /// The person's full name
    #[arg(long, value_name = "FULL NAME")]
    pub name: String,
    /// The person's email address
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// Where the password comes from; without either flag it is asked for on a terminal
    /// and read from standard input otherwise
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// Arguments of `users set`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["name", "email", "no_email", "password", "password_stdin", "disable", "enable"])
))]
pub struct UserSet {
    /// Username (case-insensitive)
    pub user: String,
    /// The new full name
    #[arg(long, value_name = "FULL NAME")]
    pub name: Option<String>,
    /// The new email address
    #[arg(long, value_name = "EMAIL", conflicts_with = "no_email")]
    pub email: Option<String>,
    /// Remove the email address
    #[arg(long)]
    pub no_email: bool,
    /// A new password (also clears failed sign-ins and any lockout)
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Refuse the account's sign-ins from now on
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    /// Let a disabled account sign in again
    #[arg(long)]
    pub enable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, Cli};
    use clap::error::ErrorKind;
    use clap::Parser as _;

    fn users(args: &[&str]) -> Result<UsersCommand, clap::Error> {
        let all = ["mdmctl", "users"].iter().chain(args).copied();
        match Cli::try_parse_from(all)?.command {
            Action::Users { command } => Ok(command),
            other => panic!("not a users command: {other:?}"),
        }
    }

    #[test]
    fn list_pages_like_the_other_lists() {
        let UsersCommand::List { limit, after, all } =
            users(&["list", "--limit", "5", "--after", "ada", "--all"]).expect("parse")
        else {
            panic!("not list");
        };
        assert_eq!((limit, after.as_deref(), all), (Some(5), Some("ada"), true));
        assert!(users(&["list", "--limit", "0"]).is_err());
        assert!(users(&["list", "--limit", "1001"]).is_err());
    }

    #[test]
    fn add_needs_a_name_and_takes_no_password_argument() {
        let UsersCommand::Add(a) = users(&[
            "add",
            "ada",
            "--name",
            "Ada Lovelace",
            "--email",
            "ada@example.org",
        ])
        .expect("parse") else {
            panic!("not add");
        };
        assert_eq!(a.username, "ada");
        assert_eq!(a.name, "Ada Lovelace");
        assert_eq!(a.email.as_deref(), Some("ada@example.org"));
        assert!(!a.password.prompt() && !a.password.password_stdin);

        let err = users(&["add", "ada"]).expect_err("no --name");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);

        let UsersCommand::Add(a) =
            users(&["add", "ada", "--name", "Ada", "--password-stdin"]).expect("parse")
        else {
            panic!("not add");
        };
        assert!(a.password.password_stdin);
    }

    #[test]
    fn a_password_value_is_kept_out_of_every_message() {
        for args in [
            &["set", "ada", "--password", "hunter2-secret"][..],
            &["set", "ada", "--password=hunter2-secret"],
            &[
                "add",
                "ada",
                "--name",
                "Ada",
                "--password",
                "hunter2-secret",
            ],
        ] {
            let cmd = users(args).expect("parsed, to be refused by the command");
            let given = match &cmd {
                UsersCommand::Set(s) => s.password.value_given(),
                UsersCommand::Add(a) => a.password.value_given(),
                other => panic!("{other:?}"),
            };
            assert!(given, "{args:?}");
            assert!(!format!("{cmd:?}").contains("hunter2"), "{cmd:?}");
        }
        let err = users(&[
            "set",
            "ada",
            "--password",
            "hunter2-secret",
            "--password-stdin",
        ])
        .expect_err("both");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let UsersCommand::Set(s) =
            users(&["set", "ada", "--password", "--disable"]).expect("parse")
        else {
            panic!("not set");
        };
        assert!(s.password.prompt() && !s.password.value_given() && s.disable);
    }

    #[test]
    fn set_needs_a_change_and_refuses_contradictions() {
        let err = users(&["set", "ada"]).expect_err("nothing to change");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        for args in [
            &["set", "ada", "--email", "a@b.c", "--no-email"][..],
            &["set", "ada", "--disable", "--enable"],
            &["set", "ada", "--password", "--password-stdin"],
        ] {
            let err = users(args).expect_err(&args.join(" "));
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
        let UsersCommand::Set(s) =
            users(&["set", "Ada", "--name", "Ada King", "--no-email", "--enable"]).expect("parse")
        else {
            panic!("not set");
        };
        assert_eq!(s.name.as_deref(), Some("Ada King"));
        assert!(s.no_email && s.enable && !s.disable && s.email.is_none());
    }

    #[test]
    fn show_remove_and_unlock_take_a_username() {
        assert!(
            matches!(users(&["show", "ada"]), Ok(UsersCommand::Show { user }) if user == "ada")
        );
        assert!(
            matches!(users(&["remove", "ada"]), Ok(UsersCommand::Remove { user }) if user == "ada")
        );
        assert!(
            matches!(users(&["unlock", "ada"]), Ok(UsersCommand::Unlock { user }) if user == "ada")
        );
        assert!(users(&["unlock"]).is_err());
    }
}
