//! `mdmctl abm ...`: Apple Business Manager connections, server tokens, devices, enrollment
//! profiles and assignment rules.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use crate::ttl::parse_interval;

/// Longest connection, profile or rule name the appliance accepts.
const MAX_NAME_CHARS: usize = 64;

/// Checks a connection, profile or rule name the way the appliance does, so a typo fails
/// before anything is sent (and cannot turn into another URL path).
pub fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "a name is 1 to {MAX_NAME_CHARS} characters long; {text:?} is not"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{text:?} holds {bad:?}; names use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(text.to_owned())
}

/// `mdmctl abm ...`
#[derive(Debug, Subcommand)]
pub enum AbmCommand {
    /// Create a connection for an MDM server in ABM, with a key pair for its server token
    Add(AbmAdd),
    /// Print the public key certificate to upload to the MDM server in ABM
    PublicKey {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// Stage a new key pair first (the current token keeps working until a token made
        /// for the new key is uploaded)
        #[arg(long)]
        new: bool,
        /// Write the certificate here instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The server token downloaded from ABM
    Token {
        /// What to do with the server token
        #[command(subcommand)]
        command: AbmTokenCommand,
    },
    /// List connections with their token state and last sync
    List,
    /// Show one connection: token state and what to do, account, sync, devices
    Show {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Change a connection's settings
    Set(AbmSet),
    /// Forget a connection with its token, device list, profiles and rules (nothing is
    /// changed in ABM)
    Delete {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// Confirm the deletion
        #[arg(long)]
        yes: bool,
    },
    /// Sync the device list with ABM now, wait for it, then assign profiles that are due
    Sync {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// Fetch every device again instead of the changes since the last sync
        #[arg(long)]
        full: bool,
    },
    /// Assign profiles now to the devices that are due (new, changed or retried)
    AssignNow {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// List the devices ABM lists for a connection, by serial number
    Devices(AbmDevices),
    /// Show one device, with the outcome and reason of its last assignment
    Device {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The device's serial number
        serial: String,
    },
    /// ABM enrollment profiles (what Setup Assistant shows and where it enrolls)
    Profile {
        /// What to do with profiles
        #[command(subcommand)]
        command: AbmProfileCommand,
    },
    /// Remove devices from your organisation in ABM for good
    Disown(AbmDisown),
    /// Rules that choose each device's profile
    Rules {
        /// What to do with rules
        #[command(subcommand)]
        command: AbmRulesCommand,
    },
}

/// Arguments of `abm add`.
#[derive(Debug, Args)]
pub struct AbmAdd {
    /// Name of the new connection (letters, digits, '.', '_', '-')
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// ABM API base URL; Apple's (https://mdmenrollment.apple.com) if absent
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// PEM file with the CA(s) to trust for the ABM URL instead of the system's roots
    #[arg(long, value_name = "FILE")]
    pub abm_ca: Option<PathBuf>,
    /// Time between automatic syncs (e.g. 15m, 1h, 900); 0 turns them off; the appliance
    /// default if absent
    #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
    pub interval: Option<u64>,
}

/// `mdmctl abm token ...`
#[derive(Debug, Subcommand)]
pub enum AbmTokenCommand {
    /// Upload the server token (.p7m) downloaded from the MDM server's page in ABM
    Upload {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The token file, e.g. North_Token_2024-05-01T10-00-00Z_smime.p7m
        file: PathBuf,
        /// Accept a token from another ABM account (another consumer key). WARNING: the
        /// connection then lists that account's devices
        #[arg(long)]
        force: bool,
    },
}

/// Arguments of `abm set`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["interval", "default_profile", "no_default_profile", "url", "abm_ca", "system_ca"])
))]
pub struct AbmSet {
    /// The connection
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Time between automatic syncs (e.g. 15m, 1h, 900); 0 turns them off
    #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
    pub interval: Option<u64>,
    /// Profile for devices no rule covers (devices it now covers are re-assigned)
    #[arg(long, value_name = "PROFILE", value_parser = parse_name,
          conflicts_with = "no_default_profile")]
    pub default_profile: Option<String>,
    /// Clear the default profile: devices no rule covers get no profile
    #[arg(long)]
    pub no_default_profile: bool,
    /// ABM API base URL
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// PEM file with the CA(s) to trust for the ABM URL instead of the system's roots
    #[arg(long, value_name = "FILE", conflicts_with = "system_ca")]
    pub abm_ca: Option<PathBuf>,
    /// Trust the system's roots for the ABM URL again
    #[arg(long)]
    pub system_ca: bool,
}

/// Arguments of `abm devices`.
#[derive(Debug, Args)]
pub struct AbmDevices {
    /// The connection
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Page size (1 to 1000); the appliance default (100) if absent
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Start after this serial number (the `next` of the previous page)
    #[arg(long, value_name = "SERIAL")]
    pub after: Option<String>,
    /// Fetch every page
    #[arg(long)]
    pub all: bool,
    /// Print every device as CSV, as the appliance exports it
    #[arg(long, conflicts_with_all = ["limit", "after", "all"])]
    pub csv: bool,
}

/// Serial numbers from arguments and/or a file.
#[derive(Debug, Args)]
pub struct SerialArgs {
    /// Serial numbers
    #[arg(value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// File with more serial numbers, one per line (`-` for standard input; blank lines and
    /// lines starting with '#' are skipped)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `mdmctl abm profile ...`
#[derive(Debug, Subcommand)]
pub enum AbmProfileCommand {
    /// Create or replace a profile from Apple-format JSON and define it with Apple
    Define {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The profile's name on the appliance
        #[arg(value_parser = parse_name)]
        profile: String,
        /// JSON file with Apple's profile fields (`profile_name` required); `-` for
        /// standard input
        file: PathBuf,
    },
    /// List a connection's profiles
    List {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Show a profile with every field
    Show {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The profile
        #[arg(value_parser = parse_name)]
        profile: String,
    },
    /// Delete a profile (refused while a rule or the default uses it)
    Delete {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The profile
        #[arg(value_parser = parse_name)]
        profile: String,
    },
    /// Assign a profile to devices now, and keep it theirs (rule assign-PROFILE)
    Assign {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The profile
        #[arg(value_parser = parse_name)]
        profile: String,
        /// Which devices
        #[command(flatten)]
        serials: SerialArgs,
    },
    /// Remove the ABM profile from devices (they get none until assigned again)
    Remove {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// Which devices
        #[command(flatten)]
        serials: SerialArgs,
    },
}

/// Arguments of `abm disown`.
#[derive(Debug, Args)]
pub struct AbmDisown {
    /// The connection
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Which devices
    #[command(flatten)]
    pub serials: SerialArgs,
    /// Confirm that the devices leave your organisation in ABM for good. WARNING: only
    /// the reseller or Apple can add them back
    #[arg(long)]
    pub yes_disown: bool,
}

/// `mdmctl abm rules ...`
#[derive(Debug, Subcommand)]
pub enum AbmRulesCommand {
    /// List a connection's rules in the order they are tried
    List {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Create or replace a rule
    Set(AbmRuleSet),
    /// Delete a rule (devices it covered are re-assigned)
    Delete {
        /// The connection
        #[arg(value_parser = parse_name)]
        name: String,
        /// The rule
        #[arg(value_parser = parse_name)]
        rule: String,
    },
}

/// Arguments of `abm rules set`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("match")
        .required(true)
        .multiple(true)
        .args(["serials", "serials_file", "family", "model", "os"])
))]
pub struct AbmRuleSet {
    /// The connection
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// The rule's name
    #[arg(value_parser = parse_name)]
    pub rule: String,
    /// The profile the rule gives
    #[arg(long, value_name = "PROFILE", value_parser = parse_name)]
    pub profile: String,
    /// Order among rules, lowest first (0 if absent)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// A serial number the rule lists (repeat for several)
    #[arg(long = "serial", value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// File with serial numbers, one per line (`-` for standard input)
    #[arg(long, value_name = "FILE")]
    pub serials_file: Option<PathBuf>,
    /// Device family to match exactly, e.g. iPad, iPhone, Mac
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// Text the model must contain, e.g. "iPad Air"
    #[arg(long, value_name = "TEXT")]
    pub model: Option<String>,
    /// OS to match exactly, e.g. iOS, OSX, tvOS
    #[arg(long, value_name = "OS")]
    pub os: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, Cli};
    use clap::error::ErrorKind;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<AbmCommand, clap::Error> {
        let cli = Cli::try_parse_from(["mdmctl", "abm"].into_iter().chain(args.iter().copied()))?;
        match cli.command {
            Action::Abm { command } => Ok(command),
            other => panic!("not an abm command: {other:?}"),
        }
    }

    #[test]
    fn add_takes_an_url_its_ca_and_an_interval() {
        let AbmCommand::Add(add) = parse(&[
            "add",
            "north",
            "--url",
            "https://abm-sim.lan:9443",
            "--abm-ca",
            "sim-ca.pem",
            "--interval",
            "15m",
        ])
        .expect("parse") else {
            panic!("not add");
        };
        assert_eq!(add.name, "north");
        assert_eq!(add.url.as_deref(), Some("https://abm-sim.lan:9443"));
        assert_eq!(add.abm_ca, Some(PathBuf::from("sim-ca.pem")));
        assert_eq!(add.interval, Some(900));
        let AbmCommand::Add(add) = parse(&["add", "south", "--interval", "0"]).expect("parse")
        else {
            panic!("not add");
        };
        assert_eq!((add.url, add.abm_ca, add.interval), (None, None, Some(0)));
    }

    #[test]
    fn the_global_ca_still_means_the_appliance_ca() {
        let cli = Cli::try_parse_from([
            "mdmctl",
            "abm",
            "add",
            "north",
            "--ca",
            "appliance.pem",
            "--abm-ca",
            "abm.pem",
        ])
        .expect("parse");
        assert_eq!(cli.ca, Some(PathBuf::from("appliance.pem")));
        let Action::Abm {
            command: AbmCommand::Add(add),
        } = cli.command
        else {
            panic!("not add");
        };
        assert_eq!(add.abm_ca, Some(PathBuf::from("abm.pem")));
    }

    #[test]
    fn set_needs_a_change_and_refuses_contradictions() {
        let AbmCommand::Set(set) =
            parse(&["set", "north", "--no-default-profile", "--system-ca"]).expect("parse")
        else {
            panic!("not set");
        };
        assert!(set.no_default_profile && set.system_ca);
        assert!(set.default_profile.is_none() && set.abm_ca.is_none() && set.interval.is_none());
        let AbmCommand::Set(set) =
            parse(&["set", "north", "--default-profile", "staff"]).expect("parse")
        else {
            panic!("not set");
        };
        assert_eq!(set.default_profile.as_deref(), Some("staff"));

        let none = parse(&["set", "north"]).expect_err("no change");
        assert_eq!(none.kind(), ErrorKind::MissingRequiredArgument);
        for args in [
            &[
                "set",
                "north",
                "--default-profile",
                "a",
                "--no-default-profile",
            ][..],
            &["set", "north", "--abm-ca", "x.pem", "--system-ca"],
        ] {
            let err = parse(args).expect_err("conflict");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
    }

    #[test]
    fn devices_csv_excludes_paging() {
        let AbmCommand::Devices(d) = parse(&[
            "devices", "north", "--limit", "5", "--after", "C02X1", "--all",
        ])
        .expect("parse") else {
            panic!("not devices");
        };
        assert_eq!(
            (d.limit, d.after.as_deref(), d.all, d.csv),
            (Some(5), Some("C02X1"), true, false)
        );
        assert!(matches!(
            parse(&["devices", "north", "--csv"]),
            Ok(AbmCommand::Devices(AbmDevices { csv: true, .. }))
        ));
        let err = parse(&["devices", "north", "--csv", "--all"]).expect_err("conflict");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(parse(&["devices", "north", "--limit", "1001"]).is_err());
    }

    #[test]
    fn serial_commands_take_arguments_and_a_file() {
        let AbmCommand::Profile {
            command:
                AbmProfileCommand::Assign {
                    name,
                    profile,
                    serials,
                },
        } = parse(&[
            "profile", "assign", "north", "staff", "C02X1", "DMPX2", "--file", "more.txt",
        ])
        .expect("parse")
        else {
            panic!("not profile assign");
        };
        assert_eq!((name.as_str(), profile.as_str()), ("north", "staff"));
        assert_eq!(serials.serials, ["C02X1", "DMPX2"]);
        assert_eq!(serials.file, Some(PathBuf::from("more.txt")));
        // Serials may come from the file alone; an empty list is refused when it is read.
        assert!(parse(&["profile", "remove", "north", "--file", "-"]).is_ok());
        let AbmCommand::Disown(d) =
            parse(&["disown", "north", "C02X1", "--yes-disown"]).expect("parse")
        else {
            panic!("not disown");
        };
        assert!(d.yes_disown);
        assert!(parse(&["disown", "north", "C02X1", "--yes"]).is_err());
    }

    #[test]
    fn rules_set_needs_a_profile_and_something_to_match() {
        let AbmCommand::Rules {
            command: AbmRulesCommand::Set(r),
        } = parse(&[
            "rules",
            "set",
            "north",
            "ipads",
            "--profile",
            "carts",
            "--priority",
            "-5",
            "--family",
            "iPad",
            "--serial",
            "A1",
            "--serial",
            "B2",
        ])
        .expect("parse")
        else {
            panic!("not rules set");
        };
        assert_eq!(r.priority, Some(-5));
        assert_eq!(r.serials, ["A1", "B2"]);
        assert_eq!(r.family.as_deref(), Some("iPad"));
        let err = parse(&["rules", "set", "north", "x", "--profile", "p"]).expect_err("no match");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["rules", "set", "north", "x", "--os", "iOS"]).expect_err("no profile");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(parse(&[
            "rules",
            "set",
            "north",
            "x",
            "--profile",
            "p",
            "--serials-file",
            "f"
        ])
        .is_ok());
    }

    #[test]
    fn the_remaining_commands_parse() {
        assert!(matches!(
            parse(&["public-key", "north", "--new", "--out", "north.pem"]),
            Ok(AbmCommand::PublicKey {
                new: true,
                out: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&["token", "upload", "north", "t.p7m", "--force"]),
            Ok(AbmCommand::Token {
                command: AbmTokenCommand::Upload { force: true, .. }
            })
        ));
        assert!(matches!(parse(&["list"]), Ok(AbmCommand::List)));
        assert!(matches!(
            parse(&["show", "north"]),
            Ok(AbmCommand::Show { .. })
        ));
        assert!(matches!(
            parse(&["delete", "north"]),
            Ok(AbmCommand::Delete { yes: false, .. })
        ));
        assert!(matches!(
            parse(&["sync", "north", "--full"]),
            Ok(AbmCommand::Sync { full: true, .. })
        ));
        assert!(matches!(
            parse(&["assign-now", "north"]),
            Ok(AbmCommand::AssignNow { .. })
        ));
        assert!(matches!(
            parse(&["device", "north", "C02X1"]),
            Ok(AbmCommand::Device { .. })
        ));
        assert!(matches!(
            parse(&["profile", "define", "north", "staff", "-"]),
            Ok(AbmCommand::Profile {
                command: AbmProfileCommand::Define { .. }
            })
        ));
        assert!(matches!(
            parse(&["rules", "delete", "north", "ipads"]),
            Ok(AbmCommand::Rules {
                command: AbmRulesCommand::Delete { .. }
            })
        ));
        let err = parse(&["show", "no/such"]).expect_err("bad name");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
        assert!(parse(&["add", "x", "--interval", "soon"]).is_err());
    }

    #[test]
    fn names_follow_the_appliance_rules() {
        assert_eq!(parse_name("north-1.lab_2"), Ok("north-1.lab_2".to_owned()));
        assert!(parse_name("").is_err());
        assert!(parse_name(&"a".repeat(65)).is_err());
        assert!(parse_name(&"a".repeat(64)).is_ok());
        let err = parse_name("north/../x").expect_err("slash");
        assert!(err.contains("'/'"), "{err}");
        assert!(parse_name("zoë").is_err());
        assert!(parse_name("a b").is_err());
    }
}
