//! The command line: global flags and every subcommand, as clap derive types.

pub mod abm;
pub mod backup;
pub mod lifecycle;
pub mod profiles;
pub mod users;

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::ttl::parse_ttl;
use abm::AbmCommand;
use backup::BackupCommand;
use lifecycle::{ActivityArgs, DevicesCommand, PreenrollCommand, SettingsCommand};
use profiles::{GroupsCommand, ProfilesCommand};
use users::UsersCommand;

/// Help heading of the flags every command takes, so they do not hide a command's own.
const GLOBAL: &str = "Global options";

/// Administer the MDM appliance through its admin API.
///
/// Every command talks HTTPS to the daemon; the appliance CA given with --ca is the only
/// certificate authority trusted, and the bearer token is read from --token-file.
#[derive(Debug, Parser)]
#[command(name = "mdmctl", version, propagate_version = true)]
pub struct Cli {
    /// Appliance address, e.g. https://127.0.0.1:8443
    #[arg(long, global = true, env = "MDMCTL_SERVER", value_name = "URL", help_heading = GLOBAL)]
    pub server: Option<String>,
    /// File holding the API bearer token (surrounding whitespace is ignored)
    #[arg(long, global = true, env = "MDMCTL_TOKEN_FILE", value_name = "FILE", help_heading = GLOBAL)]
    pub token_file: Option<PathBuf>,
    /// PEM file with the appliance CA: the only root trusted for the connection
    #[arg(long, global = true, env = "MDMCTL_CA", value_name = "FILE", help_heading = GLOBAL)]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON answer (pretty-printed) instead of text for humans
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// What to do
    #[command(subcommand)]
    pub command: Action,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Show the appliance's version, enrollment count, push topic and CA fingerprint
    Status,
    /// The appliance certificate authority
    Ca {
        /// What to do with the CA
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Links that let a device download an enrollment profile
    EnrollLink {
        /// What to do with enrollment links
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// The APNs push certificate (MDM push topic)
    PushCert {
        /// What to do with the push certificate
        #[command(subcommand)]
        command: PushCertCommand,
    },
    /// Devices, one per serial number: where each stands on its way to being managed, and why
    Devices {
        /// What to do with devices
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Release a device held in Setup Assistant now (sends DeviceConfigured)
    Release {
        /// Serial number or enrollment ID
        key: String,
    },
    /// Devices the site expects: import them from CSV, list and forget them
    Preenroll {
        /// What to do with pre-enrolled devices
        #[command(subcommand)]
        command: PreenrollCommand,
    },
    /// The activity log: who did what, when, to which device, and how it ended
    Activity(ActivityArgs),
    /// Lifecycle settings: enrollment restriction, release, status thresholds, retention
    Settings {
        /// What to do with the settings
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Device groups: static lists of serial numbers, or rules over device facts
    Groups {
        /// What to do with groups
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Configuration profiles: upload them, assign them to groups and devices, follow installs
    Profiles {
        /// What to do with profiles
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Enrollment records (devices and user channels) by enrollment ID
    Enrollments {
        /// What to do with enrollments
        #[command(subcommand)]
        command: EnrollmentsCommand,
    },
    /// MDM commands: queue them and read their results
    Command {
        /// What to do with commands
        #[command(subcommand)]
        command: MdmCommand,
    },
    /// Local user accounts: the people who sign in during Setup Assistant
    Users {
        /// What to do with user accounts
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Admin API tokens
    Tokens {
        /// What to do with tokens
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Wake an enrollment now (an MDM push through APNs) and show APNs's answer
    Push {
        /// Enrollment ID (UDID, or UDID:UserID for a user channel)
        device: String,
    },
    /// The keystore that seals the appliance's keys (TPM or software)
    Keystore {
        /// What to do with the keystore
        #[command(subcommand)]
        command: KeystoreCommand,
    },
    /// Encrypted backups of the whole appliance (restored with `mdmd restore`)
    Backup {
        /// What to do with backups
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Apple Business Manager: server tokens, device sync, enrollment profiles, assignment
    Abm {
        /// What to do with Apple Business Manager
        #[command(subcommand)]
        command: AbmCommand,
    },
}

/// `mdmctl keystore ...`
#[derive(Debug, Subcommand)]
pub enum KeystoreCommand {
    /// Show the backend, data key id, key file and, for a TPM, its manufacturer and firmware
    Status,
    /// Rotate the data key: re-seal every stored secret under a new key and remove the old
    /// key from the key file (or finish a rotation left unfinished). Make a new backup after
    /// it: older backups carry the old key
    Rotate,
}

/// `mdmctl ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the appliance CA certificate (PEM)
    Show,
}

/// `mdmctl enroll-link ...`
#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Create a link and print its URL
    Create(LinkCreate),
    /// List links with their state and use count
    List,
    /// Revoke a link so that it serves no more profiles
    Revoke {
        /// The link's ID (from `enroll-link list`)
        id: String,
    },
}

/// Arguments of `enroll-link create`.
#[derive(Debug, Args)]
pub struct LinkCreate {
    /// A note for admins, e.g. who the link was sent to
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Lifetime: 7d, 12h, 30m, 3600s or 3600 (seconds); the appliance default if absent
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    /// How many profiles the link may serve; unlimited within its lifetime if absent
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_uses: Option<u64>,
}

/// `mdmctl push-cert ...`
#[derive(Debug, Subcommand)]
pub enum PushCertCommand {
    /// Upload the push certificate Apple issued (PEM or DER)
    Import {
        /// The certificate file downloaded from Apple's push certificates portal
        file: PathBuf,
        /// Accept a certificate whose topic differs from the current one. WARNING: every
        /// device enrolled under the old topic stops receiving pushes and must re-enroll
        #[arg(long)]
        force: bool,
    },
    /// Show the imported push certificate's topic and expiry
    Show,
    /// Write a certificate signing request for the push certificate (the key stays sealed on
    /// the appliance); have it signed by your MDM vendor and upload it to Apple's portal
    Csr {
        /// Write the CSR here instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `mdmctl enrollments ...`
#[derive(Debug, Subcommand)]
pub enum EnrollmentsCommand {
    /// List enrollments in ID order, one page at a time (or all of them with --all)
    List {
        /// Page size (1 to 1000); the appliance default (100) if absent
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: Option<u64>,
        /// Start after this enrollment ID (the `next` of the previous page)
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Fetch every page
        #[arg(long)]
        all: bool,
    },
    /// Show one enrollment in detail
    Show {
        /// Enrollment ID (UDID, EnrollmentID, or UDID:UserID for a user channel)
        id: String,
    },
    /// Show an enrollment's command history, newest first
    Commands {
        /// Enrollment ID
        id: String,
        /// How many entries (1 to 1000); the appliance default (50) if absent
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: Option<u64>,
    },
}

/// `mdmctl command ...`
#[derive(Debug, Subcommand)]
pub enum MdmCommand {
    /// Queue a command for one or more enrollments and print its UUID
    Send(CommandSend),
    /// Show a command's status on each enrollment and the results devices returned
    Show {
        /// The command UUID printed by `command send`
        uuid: String,
    },
}

/// Arguments of `command send`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["request_type", "plist"])))]
pub struct CommandSend {
    /// Enrollment ID to send to (repeat for several)
    #[arg(long = "device", value_name = "ID", required = true)]
    pub devices: Vec<String>,
    /// A command the appliance builds with default arguments, e.g. DeviceInformation,
    /// SecurityInfo, ProfileList, InstalledApplicationList, CertificateList,
    /// DeviceConfigured, DeviceLock, RestartDevice, ShutDownDevice, EraseDevice
    #[arg(value_name = "TYPE")]
    pub request_type: Option<String>,
    /// A command plist `{Command: {RequestType: ..., ...}}` to send as is (its CommandUUID
    /// is replaced)
    #[arg(long, value_name = "FILE")]
    pub plist: Option<PathBuf>,
    /// Confirm a command that cannot be undone (EraseDevice)
    #[arg(long)]
    pub yes: bool,
}

/// `mdmctl tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it (it is shown only this once)
    Create {
        /// Who or what the token is for
        name: String,
        /// What the token may do
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens (not their secrets)
    List,
    /// Revoke a token (the last active admin token cannot be revoked)
    Revoke {
        /// The token's ID, from `tokens list`
        id: String,
    },
}

/// API token roles, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything, including push certificate and tokens
    Admin,
    /// Day-to-day device work: commands and enrollment links
    Operator,
    /// Read-only
    Auditor,
}

impl RoleArg {
    /// The role's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            RoleArg::Admin => "Admin",
            RoleArg::Operator => "Operator",
            RoleArg::Auditor => "Auditor",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mdmctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_may_follow_the_subcommand() {
        let cli = parse(&[
            "enrollments",
            "list",
            "--server",
            "https://mdm.lan:8443",
            "--token-file",
            "/t",
            "--ca",
            "/ca.pem",
            "--json",
        ])
        .expect("parse");
        assert_eq!(cli.server.as_deref(), Some("https://mdm.lan:8443"));
        assert_eq!(cli.token_file, Some(PathBuf::from("/t")));
        assert_eq!(cli.ca, Some(PathBuf::from("/ca.pem")));
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Action::Enrollments {
                command: EnrollmentsCommand::List {
                    limit: None,
                    after: None,
                    all: false
                }
            }
        ));
    }

    #[test]
    fn enroll_link_create_converts_the_ttl() {
        let cli = parse(&[
            "enroll-link",
            "create",
            "--label",
            "Bob",
            "--ttl",
            "12h",
            "--max-uses",
            "3",
        ])
        .expect("parse");
        let Action::EnrollLink {
            command: LinkCommand::Create(c),
        } = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(c.label.as_deref(), Some("Bob"));
        assert_eq!(c.ttl, Some(43_200));
        assert_eq!(c.max_uses, Some(3));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["enroll-link", "create", "--ttl", "5x"][..],
            &["enroll-link", "create", "--max-uses", "0"],
            &["enrollments", "list", "--limit", "0"],
            &["enrollments", "list", "--limit", "1001"],
            &["tokens", "create", "ci", "--role", "root"],
            &["tokens", "create", "ci"],
            &["frobnicate"],
        ] {
            let err = parse(args).expect_err(&args.join(" "));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn command_send_takes_a_type_or_a_plist_not_both() {
        let cli = parse(&[
            "command",
            "send",
            "--device",
            "A",
            "--device",
            "B",
            "DeviceInformation",
        ])
        .expect("parse");
        let Action::Command {
            command: MdmCommand::Send(s),
        } = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(s.devices, ["A", "B"]);
        assert_eq!(s.request_type.as_deref(), Some("DeviceInformation"));
        assert!(s.plist.is_none() && !s.yes);

        let cli =
            parse(&["command", "send", "--device", "A", "--plist", "cmd.plist"]).expect("parse");
        let Action::Command {
            command: MdmCommand::Send(s),
        } = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(s.plist, Some(PathBuf::from("cmd.plist")));

        let both = parse(&[
            "command",
            "send",
            "--device",
            "A",
            "--plist",
            "x",
            "ProfileList",
        ]);
        assert_eq!(both.expect_err("both").kind(), ErrorKind::ArgumentConflict);
        let neither = parse(&["command", "send", "--device", "A"]);
        assert_eq!(
            neither.expect_err("neither").kind(),
            ErrorKind::MissingRequiredArgument
        );
        let no_device = parse(&["command", "send", "ProfileList"]);
        assert_eq!(
            no_device.expect_err("no device").kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn roles_map_to_the_api_spelling() {
        let cli = parse(&["tokens", "create", "ci", "--role", "operator"]).expect("parse");
        let Action::Tokens {
            command: TokensCommand::Create { name, role },
        } = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(name, "ci");
        assert_eq!(role.api_name(), "Operator");
        assert_eq!(RoleArg::Admin.api_name(), "Admin");
        assert_eq!(RoleArg::Auditor.api_name(), "Auditor");
    }

    #[test]
    fn keystore_status_parses() {
        let cli = parse(&["keystore", "status", "--json"]).expect("parse");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Action::Keystore {
                command: KeystoreCommand::Status
            }
        ));
        assert!(parse(&["keystore"]).is_err());
    }

    #[test]
    fn push_cert_import_and_revoke_take_positionals() {
        let cli = parse(&["push-cert", "import", "MDM_Push.pem", "--force"]).expect("parse");
        assert!(matches!(
            cli.command,
            Action::PushCert {
                command: PushCertCommand::Import { force: true, .. }
            }
        ));
        let cli = parse(&["enroll-link", "revoke", "L1"]).expect("parse");
        assert!(
            matches!(cli.command, Action::EnrollLink { command: LinkCommand::Revoke { id } } if id == "L1")
        );
        let cli = parse(&["enrollments", "commands", "UDID-1", "--limit", "5"]).expect("parse");
        assert!(matches!(
            cli.command,
            Action::Enrollments {
                command: EnrollmentsCommand::Commands { limit: Some(5), .. }
            }
        ));
        // The old spelling now means the joined device records, which have no history list.
        assert!(parse(&["devices", "commands", "UDID-1"]).is_err());
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert_eq!(parse(&["--help"]).expect_err("help").exit_code(), 0);
        assert_eq!(parse(&["--version"]).expect_err("version").exit_code(), 0);
    }
}
