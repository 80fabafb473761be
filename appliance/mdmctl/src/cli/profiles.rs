//! Device groups and configuration profiles: `mdmctl groups ...` and `mdmctl profiles ...`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::abm::SerialArgs;

/// `mdmctl groups ...`
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups with their kind, member count and profiles
    List,
    /// Show one group: its rule, member count and the profiles assigned to it
    Show {
        /// The group's ID (grp_...) or name
        group: String,
    },
    /// Create a static group (serial numbers) or a rule-based group (--where)
    Create(GroupCreate),
    /// Rename a group, change its description or replace its rule
    Update(GroupUpdate),
    /// Delete a group (refused while a profile is assigned to it)
    Delete {
        /// The group's ID or name
        group: String,
    },
    /// List a group's members by serial number
    Members {
        /// The group's ID or name
        group: String,
        /// Page size (1 to 1000); the appliance default (100) if absent
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: Option<u64>,
        /// Start after this serial number (the `next` of the previous page)
        #[arg(long, value_name = "SERIAL")]
        after: Option<String>,
        /// Fetch every page
        #[arg(long)]
        all: bool,
    },
    /// Add serial numbers to a static group
    Add {
        /// The group's ID or name
        group: String,
        /// Which devices
        #[command(flatten)]
        serials: SerialArgs,
    },
    /// Remove serial numbers from a static group
    Remove {
        /// The group's ID or name
        group: String,
        /// Which devices
        #[command(flatten)]
        serials: SerialArgs,
    },
}

/// Whether a device must meet every condition of a rule or any one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatchArg {
    /// Every condition must hold
    All,
    /// At least one condition must hold
    Any,
}

impl MatchArg {
    /// The mode's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            MatchArg::All => "all",
            MatchArg::Any => "any",
        }
    }
}

/// The device facts a rule condition can look at, named as in the admin API.
pub const RULE_FIELDS: [&str; 6] = [
    "model",
    "os_version",
    "platform",
    "ownership",
    "abm_connection",
    "serial",
];

/// How a rule condition compares, named as in the admin API.
pub const RULE_OPS: [&str; 6] = [
    "is",
    "is_not",
    "starts_with",
    "contains",
    "version_at_least",
    "version_below",
];

/// One `--where "FIELD OP VALUE"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// One of [`RULE_FIELDS`].
    pub field: &'static str,
    /// One of [`RULE_OPS`].
    pub op: &'static str,
    /// The rest of the text, trimmed; inner spaces are kept (`model is iPad Air`).
    pub value: String,
}

/// The first whitespace-separated word of `text` and what follows it.
fn next_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], &text[end..]),
        None => (text, ""),
    }
}

/// Parses `FIELD OP VALUE`. clap puts the argument's name in front of the error.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    const SHAPE: &str = "write it as \"FIELD OP VALUE\", e.g. \"os_version version_at_least 17.4\"";
    let (field, rest) = next_word(text);
    let (op, rest) = next_word(rest);
    let value = rest.trim();
    if field.is_empty() || op.is_empty() || value.is_empty() {
        return Err(format!("{text:?} is not a condition: {SHAPE}"));
    }
    let field = RULE_FIELDS
        .into_iter()
        .find(|f| *f == field)
        .ok_or_else(|| {
            format!(
                "{field:?} is not a field; use one of {}",
                RULE_FIELDS.join(", ")
            )
        })?;
    let op = RULE_OPS.into_iter().find(|o| *o == op).ok_or_else(|| {
        format!(
            "{op:?} is not an operator; use one of {}",
            RULE_OPS.join(", ")
        )
    })?;
    // The appliance refuses this too; saying it here names the argument instead of
    // `rule.conditions[N]`.
    if op.starts_with("version_") && field != "os_version" {
        return Err(format!(
            "{op} compares OS versions: use it with the field os_version, not {field}"
        ));
    }
    Ok(Condition {
        field,
        op,
        value: value.to_owned(),
    })
}

/// Arguments of `groups create`.
#[derive(Debug, Args)]
pub struct GroupCreate {
    /// The group's name (unique, ignoring case)
    pub name: String,
    /// A note for admins
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// With --where: whether a device must meet every condition (all, the default) or any one
    #[arg(long, value_name = "all|any", value_enum, requires = "conditions")]
    pub rule_match: Option<MatchArg>,
    /// A rule condition "FIELD OP VALUE" (repeat for several); makes a rule-based group.
    /// FIELD: model, os_version, platform, ownership, abm_connection, serial. OP: is,
    /// is_not, starts_with, contains, version_at_least, version_below
    #[arg(long = "where", value_name = "FIELD OP VALUE", value_parser = parse_condition)]
    pub conditions: Vec<Condition>,
    /// A serial number to put in the static group (repeat for several)
    #[arg(long = "member", value_name = "SERIAL", conflicts_with = "conditions")]
    pub members: Vec<String>,
    /// File with serial numbers for the static group, one per line (`-` for standard input;
    /// blank lines and lines starting with '#' are skipped)
    #[arg(long, value_name = "FILE", conflicts_with = "conditions")]
    pub members_file: Option<PathBuf>,
}

/// Arguments of `groups update`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["name", "description", "rule_match", "conditions"])
))]
pub struct GroupUpdate {
    /// The group's ID or name
    pub group: String,
    /// The new name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The new description ("" clears it)
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Whether a device must meet every condition or any one; alone, it keeps the conditions
    #[arg(long, value_name = "all|any", value_enum)]
    pub rule_match: Option<MatchArg>,
    /// The rule's conditions, replacing all of them (repeat for several); the match mode
    /// stays unless --rule-match is given
    #[arg(long = "where", value_name = "FIELD OP VALUE", value_parser = parse_condition)]
    pub conditions: Vec<Condition>,
}

/// `mdmctl profiles ...`
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List configuration profiles with their payloads and assignments
    List,
    /// Show one profile: payloads, signer, warnings and where it is assigned
    Show {
        /// The profile's ID (prf_...), name or PayloadIdentifier
        profile: String,
    },
    /// Upload a .mobileconfig file (signed or not) as a new profile
    Upload {
        /// The .mobileconfig file (`-` for standard input)
        file: PathBuf,
        /// The profile's name on the appliance; its PayloadDisplayName if absent
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Replace a profile's file with a new version (same PayloadIdentifier); devices that
    /// have it get the new version
    Replace {
        /// The profile's ID, name or PayloadIdentifier
        profile: String,
        /// The new .mobileconfig file (`-` for standard input)
        file: PathBuf,
    },
    /// Delete a profile; it is removed from every device that has it
    Delete {
        /// The profile's ID, name or PayloadIdentifier
        profile: String,
        /// Confirm deleting a profile that is still assigned (it is removed from devices)
        #[arg(long)]
        yes: bool,
    },
    /// Download a profile's file as it was uploaded
    Download {
        /// The profile's ID, name or PayloadIdentifier
        profile: String,
        /// Write the file here instead of standard output
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Assign a profile to groups and devices; it is installed on them
    Assign(ProfileTargets),
    /// Take assignments away; the profile is removed from devices no longer covered
    Unassign(ProfileTargets),
    /// Show where each device stands with a profile (installing, installed, failed, removing)
    Status(ProfileStatus),
    /// Try the devices whose install of a profile failed again
    Retry {
        /// The profile's ID, name or PayloadIdentifier
        profile: String,
    },
}

/// Arguments of `profiles assign` and `profiles unassign`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("targets")
        .required(true)
        .multiple(true)
        .args(["groups", "devices"])
))]
pub struct ProfileTargets {
    /// The profile's ID, name or PayloadIdentifier
    pub profile: String,
    /// A group's ID or name (repeat for several)
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// A device's serial number (repeat for several)
    #[arg(long = "device", value_name = "SERIAL")]
    pub devices: Vec<String>,
}

/// A device's install state for one profile, as the admin API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InstallStateArg {
    /// InstallProfile is queued or sent, not yet acknowledged
    Installing,
    /// The device acknowledged InstallProfile
    Installed,
    /// The device answered InstallProfile with an error
    Failed,
    /// RemoveProfile is queued or sent
    Removing,
}

impl InstallStateArg {
    /// The state's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            InstallStateArg::Installing => "installing",
            InstallStateArg::Installed => "installed",
            InstallStateArg::Failed => "failed",
            InstallStateArg::Removing => "removing",
        }
    }
}

/// Arguments of `profiles status`.
#[derive(Debug, Args)]
pub struct ProfileStatus {
    /// The profile's ID, name or PayloadIdentifier
    pub profile: String,
    /// Only devices in this state (repeat, or separate with commas, for several); filtered
    /// here, after fetching
    #[arg(
        long = "state",
        value_name = "STATE",
        value_enum,
        value_delimiter = ','
    )]
    pub states: Vec<InstallStateArg>,
    /// Page size (1 to 1000); the appliance default (100) if absent
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Start after this serial number (the `next` of the previous page)
    #[arg(long, value_name = "SERIAL")]
    pub after: Option<String>,
    /// Fetch every page
    #[arg(long)]
    pub all: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, Cli};
    use clap::error::ErrorKind;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<Action, clap::Error> {
        Cli::try_parse_from(std::iter::once("mdmctl").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    fn groups(args: &[&str]) -> Result<GroupsCommand, clap::Error> {
        let all: Vec<&str> = ["groups"].iter().chain(args).copied().collect();
        match parse(&all)? {
            Action::Groups { command } => Ok(command),
            other => panic!("not a groups command: {other:?}"),
        }
    }

    fn profiles(args: &[&str]) -> Result<ProfilesCommand, clap::Error> {
        let all: Vec<&str> = ["profiles"].iter().chain(args).copied().collect();
        match parse(&all)? {
            Action::Profiles { command } => Ok(command),
            other => panic!("not a profiles command: {other:?}"),
        }
    }

    #[test]
    fn conditions_are_field_op_and_the_rest_as_value() {
        assert_eq!(
            parse_condition("os_version version_at_least 17.4"),
            Ok(Condition {
                field: "os_version",
                op: "version_at_least",
                value: "17.4".into()
            })
        );
        let c = parse_condition("  model   is  iPad Air 13\"  ").expect("spaces");
        assert_eq!(
            (c.field, c.op, c.value.as_str()),
            ("model", "is", "iPad Air 13\"")
        );
        let c = parse_condition("platform\tis_not\tipados").expect("tabs");
        assert_eq!(c.value, "ipados");
    }

    #[test]
    fn condition_errors_say_what_is_wrong() {
        for (text, expect) in [
            ("", "is not a condition"),
            ("model is", "is not a condition"),
            ("model", "is not a condition"),
            (
                "modle is iPad",
                "\"modle\" is not a field; use one of model, os_version",
            ),
            (
                "model equals iPad",
                "\"equals\" is not an operator; use one of is, is_not",
            ),
            ("Model is iPad", "is not a field"),
            (
                "model version_below 17",
                "use it with the field os_version, not model",
            ),
        ] {
            let err = parse_condition(text).expect_err(text);
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn where_errors_name_the_argument() {
        let err = groups(&["create", "old", "--where", "os_version >= 17"]).expect_err("bad op");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("--where <FIELD OP VALUE>"), "{text}");
        assert!(text.contains("\">=\" is not an operator"), "{text}");
    }

    #[test]
    fn create_makes_a_rule_or_a_static_group_not_both() {
        let GroupsCommand::Create(c) = groups(&[
            "create",
            "new ipads",
            "--description",
            "iPadOS 17.4 and later",
            "--rule-match",
            "any",
            "--where",
            "os_version version_at_least 17.4",
            "--where",
            "platform is ipados",
        ])
        .expect("parse") else {
            panic!("not create");
        };
        assert_eq!(c.name, "new ipads");
        assert_eq!(c.rule_match, Some(MatchArg::Any));
        assert_eq!(c.conditions.len(), 2);
        assert_eq!(c.conditions[1].field, "platform");
        assert!(c.members.is_empty() && c.members_file.is_none());

        let GroupsCommand::Create(c) = groups(&[
            "create",
            "carts",
            "--member",
            "C02X1",
            "--member",
            "DMPX2",
            "--members-file",
            "-",
        ])
        .expect("parse") else {
            panic!("not create");
        };
        assert_eq!(c.members, ["C02X1", "DMPX2"]);
        assert_eq!(c.members_file, Some(PathBuf::from("-")));
        assert!(c.conditions.is_empty() && c.rule_match.is_none());

        for args in [
            &["create", "x", "--where", "serial is A", "--member", "A"][..],
            &[
                "create",
                "x",
                "--where",
                "serial is A",
                "--members-file",
                "f",
            ],
        ] {
            let err = groups(args).expect_err("rule and members");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
        let err = groups(&["create", "x", "--rule-match", "all"]).expect_err("no condition");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(groups(&[
            "create",
            "x",
            "--rule-match",
            "some",
            "--where",
            "serial is A"
        ])
        .is_err());
        assert!(groups(&["create"]).is_err());
    }

    #[test]
    fn update_needs_a_change() {
        let GroupsCommand::Update(u) = groups(&[
            "update",
            "carts",
            "--name",
            "lab carts",
            "--description",
            "",
        ])
        .expect("parse") else {
            panic!("not update");
        };
        assert_eq!(u.group, "carts");
        assert_eq!(u.name.as_deref(), Some("lab carts"));
        assert_eq!(u.description.as_deref(), Some(""));
        assert!(matches!(
            groups(&["update", "g", "--rule-match", "any"]),
            Ok(GroupsCommand::Update(GroupUpdate {
                rule_match: Some(MatchArg::Any),
                ..
            }))
        ));
        assert!(matches!(
            groups(&["update", "g", "--where", "serial starts_with C02"]),
            Ok(GroupsCommand::Update(GroupUpdate {
                rule_match: None,
                ..
            }))
        ));
        let err = groups(&["update", "g"]).expect_err("nothing to change");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn the_other_group_commands_parse() {
        assert!(matches!(groups(&["list"]), Ok(GroupsCommand::List)));
        assert!(matches!(
            groups(&["show", "grp_1"]),
            Ok(GroupsCommand::Show { group }) if group == "grp_1"
        ));
        assert!(matches!(
            groups(&["delete", "carts"]),
            Ok(GroupsCommand::Delete { .. })
        ));
        assert!(matches!(
            groups(&["members", "carts", "--all", "--limit", "1000"]),
            Ok(GroupsCommand::Members {
                limit: Some(1000),
                all: true,
                after: None,
                ..
            })
        ));
        assert!(groups(&["members", "carts", "--limit", "0"]).is_err());
        let Ok(GroupsCommand::Add { group, serials }) =
            groups(&["add", "carts", "C02X1", "DMPX2", "--file", "more.txt"])
        else {
            panic!("not add");
        };
        assert_eq!(group, "carts");
        assert_eq!(serials.serials, ["C02X1", "DMPX2"]);
        assert_eq!(serials.file, Some(PathBuf::from("more.txt")));
        assert!(matches!(
            groups(&["remove", "carts", "--file", "-"]),
            Ok(GroupsCommand::Remove { .. })
        ));
    }

    #[test]
    fn assign_needs_a_group_or_a_device() {
        let Ok(ProfilesCommand::Assign(t)) = profiles(&[
            "assign", "wifi", "--group", "carts", "--group", "staff", "--device", "C02X1",
        ]) else {
            panic!("not assign");
        };
        assert_eq!(t.profile, "wifi");
        assert_eq!(t.groups, ["carts", "staff"]);
        assert_eq!(t.devices, ["C02X1"]);
        assert!(matches!(
            profiles(&["unassign", "wifi", "--device", "C02X1"]),
            Ok(ProfilesCommand::Unassign(_))
        ));
        let err = profiles(&["assign", "wifi"]).expect_err("no target");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = profiles(&["unassign", "wifi"]).expect_err("no target");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn status_states_repeat_or_come_as_a_comma_list() {
        let Ok(ProfilesCommand::Status(s)) = profiles(&[
            "status",
            "wifi",
            "--state",
            "failed,installing",
            "--state",
            "removing",
            "--all",
        ]) else {
            panic!("not status");
        };
        assert_eq!(
            s.states,
            [
                InstallStateArg::Failed,
                InstallStateArg::Installing,
                InstallStateArg::Removing
            ]
        );
        assert!(s.all);
        let err = profiles(&["status", "wifi", "--state", "pending"]).expect_err("bad state");
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        for s in InstallStateArg::value_variants() {
            assert_eq!(
                s.to_possible_value().expect("value").get_name(),
                s.api_name()
            );
        }
        for m in MatchArg::value_variants() {
            assert_eq!(
                m.to_possible_value().expect("value").get_name(),
                m.api_name()
            );
        }
    }

    #[test]
    fn the_other_profile_commands_parse() {
        assert!(matches!(profiles(&["list"]), Ok(ProfilesCommand::List)));
        assert!(matches!(
            profiles(&["upload", "wifi.mobileconfig", "--name", "Wi-Fi"]),
            Ok(ProfilesCommand::Upload { name: Some(n), .. }) if n == "Wi-Fi"
        ));
        assert!(matches!(
            profiles(&["replace", "wifi", "-"]),
            Ok(ProfilesCommand::Replace { file, .. }) if file.as_os_str() == "-"
        ));
        assert!(matches!(
            profiles(&["delete", "wifi", "--yes"]),
            Ok(ProfilesCommand::Delete { yes: true, .. })
        ));
        assert!(matches!(
            profiles(&["download", "wifi", "-o", "w.mobileconfig"]),
            Ok(ProfilesCommand::Download { out: Some(_), .. })
        ));
        assert!(matches!(
            profiles(&["download", "wifi", "--out", "w.mobileconfig"]),
            Ok(ProfilesCommand::Download { out: Some(_), .. })
        ));
        assert!(matches!(
            profiles(&["retry", "com.example.wifi"]),
            Ok(ProfilesCommand::Retry { profile }) if profile == "com.example.wifi"
        ));
        assert!(profiles(&["upload"]).is_err());
        assert!(profiles(&["replace", "wifi"]).is_err());
    }
}
