//! The device lifecycle commands: `devices`, `release`, `preenroll`, `activity` and
//! `settings`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::abm::{parse_name, SerialArgs};
use crate::when::{parse_when, When};

/// `mdmctl devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices (one per serial number) with their status and why
    List(DevicesList),
    /// Show one device: status, reason, fix, ABM records, enrollment and timeline
    Show {
        /// Serial number or enrollment ID
        key: String,
    },
    /// Count devices in each status
    Counts,
    /// Show the re-enrollment invitation (and its link) of an automatically unenrolled device
    Invitation {
        /// Serial number or enrollment ID
        key: String,
    },
}

/// A device status, as the admin API names it. The order is the API's: most in need of an
/// admin first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Assignment with Apple failed or was throttled
    #[value(name = "assignment_failed")]
    AssignmentFailed,
    /// Part of the way through enrollment, and not moving
    #[value(name = "partially_enrolled")]
    PartiallyEnrolled,
    /// Enrolled, pushed, and silent for longer than the offline threshold
    #[value(name = "offline")]
    Offline,
    /// ABM lists it for another MDM server
    #[value(name = "elsewhere")]
    Elsewhere,
    /// Held in Setup Assistant until released
    #[value(name = "awaiting_configuration")]
    AwaitingConfiguration,
    /// Enrollment started, no TokenUpdate yet
    #[value(name = "enrolling")]
    Enrolling,
    /// ABM has this appliance's profile on it; waiting for setup
    #[value(name = "assigned")]
    Assigned,
    /// ABM lists it for this server without a profile
    #[value(name = "not_assigned")]
    NotAssigned,
    /// Pre-enrolled, not seen anywhere yet
    #[value(name = "expected")]
    Expected,
    /// It checked out (its MDM profile was removed)
    #[value(name = "unenrolled")]
    Unenrolled,
    /// ABM stopped listing it for this server
    #[value(name = "released")]
    Released,
    /// Managed and answering
    #[value(name = "enrolled")]
    Enrolled,
}

impl StatusArg {
    /// Every status, in the API's order.
    pub const ALL: [StatusArg; 12] = [
        StatusArg::AssignmentFailed,
        StatusArg::PartiallyEnrolled,
        StatusArg::Offline,
        StatusArg::Elsewhere,
        StatusArg::AwaitingConfiguration,
        StatusArg::Enrolling,
        StatusArg::Assigned,
        StatusArg::NotAssigned,
        StatusArg::Expected,
        StatusArg::Unenrolled,
        StatusArg::Released,
        StatusArg::Enrolled,
    ];

    /// The status's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            StatusArg::AssignmentFailed => "assignment_failed",
            StatusArg::PartiallyEnrolled => "partially_enrolled",
            StatusArg::Offline => "offline",
            StatusArg::Elsewhere => "elsewhere",
            StatusArg::AwaitingConfiguration => "awaiting_configuration",
            StatusArg::Enrolling => "enrolling",
            StatusArg::Assigned => "assigned",
            StatusArg::NotAssigned => "not_assigned",
            StatusArg::Expected => "expected",
            StatusArg::Unenrolled => "unenrolled",
            StatusArg::Released => "released",
            StatusArg::Enrolled => "enrolled",
        }
    }
}

/// What `devices list` orders by (then by serial number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    /// Serial number (the default)
    #[value(name = "serial")]
    Serial,
    /// Status, most in need of an admin first
    #[value(name = "status")]
    Status,
    /// When the device last talked to the appliance
    #[value(name = "last_seen")]
    LastSeen,
    /// The pre-enrolled person's name
    #[value(name = "name")]
    Name,
    /// Model
    #[value(name = "model")]
    Model,
}

impl SortArg {
    /// The sort key's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            SortArg::Serial => "serial",
            SortArg::Status => "status",
            SortArg::LastSeen => "last_seen",
            SortArg::Name => "name",
            SortArg::Model => "model",
        }
    }
}

/// Arguments of `devices list`.
#[derive(Debug, Args)]
pub struct DevicesList {
    /// Only devices in this status (repeat, or separate with commas, for several)
    #[arg(
        long = "status",
        value_name = "STATUS",
        value_enum,
        value_delimiter = ','
    )]
    pub statuses: Vec<StatusArg>,
    /// Only devices whose serial, name, email, device name, model or enrollment ID contains
    /// this text (case-insensitive)
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// Only devices this ABM connection lists
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub connection: Option<String>,
    /// Order by this key, then by serial number
    #[arg(long, value_name = "KEY", value_enum)]
    pub sort: Option<SortArg>,
    /// Reverse the order
    #[arg(long)]
    pub desc: bool,
    /// Page size (1 to 1000); the appliance default (50) if absent
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: Option<u64>,
    /// Continue after this cursor (the `next` of the previous page)
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    /// Fetch every page
    #[arg(long)]
    pub all: bool,
    /// Print every matching device as CSV, as the appliance exports it
    #[arg(long, conflicts_with_all = ["limit", "after", "all"])]
    pub csv: bool,
}

/// `mdmctl preenroll ...`
#[derive(Debug, Subcommand)]
pub enum PreenrollCommand {
    /// Import the devices the site expects from a CSV file (see `preenroll sample`)
    Import(PreenrollImport),
    /// Print a sample CSV file with every column the import reads
    Sample,
    /// List pre-enrolled devices by serial number
    List {
        /// Page size (1 to 10000); the appliance default (100) if absent
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: Option<u64>,
        /// Start after this serial number (the `next` of the previous page)
        #[arg(long, value_name = "SERIAL")]
        after: Option<String>,
        /// Fetch every page
        #[arg(long)]
        all: bool,
    },
    /// Forget pre-enrolled devices (their enrollments, if any, stay)
    Delete {
        /// Which devices
        #[command(flatten)]
        serials: SerialArgs,
    },
}

/// What an import does with serial numbers that are already pre-enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnDuplicateArg {
    /// Overwrite the existing record with the file's row
    Replace,
    /// Keep the existing record and leave the row out
    Skip,
}

impl OnDuplicateArg {
    /// The choice's name in the admin API.
    pub fn api_name(self) -> &'static str {
        match self {
            OnDuplicateArg::Replace => "replace",
            OnDuplicateArg::Skip => "skip",
        }
    }
}

/// Arguments of `preenroll import`.
#[derive(Debug, Args)]
pub struct PreenrollImport {
    /// The CSV file (`-` for standard input)
    pub file: PathBuf,
    /// Check the file and report what would happen; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// What to do with serial numbers that are already pre-enrolled; without it such a file
    /// is refused
    #[arg(long, value_name = "WHAT", value_enum)]
    pub on_duplicate: Option<OnDuplicateArg>,
    /// Write the valid rows even when other rows have errors
    #[arg(long)]
    pub valid_only: bool,
}

/// Arguments of `activity`.
#[derive(Debug, Args)]
pub struct ActivityArgs {
    /// Only entries about this device (serial number or enrollment ID)
    #[arg(long, value_name = "SERIAL|ID")]
    pub device: Option<String>,
    /// Only entries by this actor, e.g. token:admin, device, system
    #[arg(long, value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Only entries of this type or a dotted prefix of it (`enrollment` matches
    /// `enrollment.enrolled`)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Only entries at or after this time: RFC 3339, or a duration ago (30m, 2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub since: Option<When>,
    /// Only entries before this time: RFC 3339, or a duration ago (30m, 2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<When>,
    /// Page size (1 to 10000); the appliance default (100) if absent
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: Option<u64>,
    /// Only entries older than this sequence number (the `next` of the previous page)
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
    /// Fetch every page
    #[arg(long)]
    pub all: bool,
    /// Print every matching entry as CSV, as the appliance exports it
    #[arg(long, conflicts_with_all = ["limit", "before", "all", "jsonl"])]
    pub csv: bool,
    /// Print every matching entry as JSON lines, as the appliance exports them
    #[arg(long, conflicts_with_all = ["limit", "before", "all"])]
    pub jsonl: bool,
}

/// `mdmctl settings ...`
#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the lifecycle settings in force
    Show,
    /// Change lifecycle settings (only the options given)
    Set(SettingsSet),
}

/// Arguments of `settings set`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args([
            "preenrolled_only",
            "abm_as_preenrolled",
            "auto_release",
            "offline_after_hours",
            "enrolling_grace_minutes",
            "awaiting_stuck_after_minutes",
            "activity_retention_days",
            "auto_unenroll_after_days",
        ])
))]
pub struct SettingsSet {
    /// Refuse enrollments from serial numbers that are not pre-enrolled
    #[arg(long, value_name = "true|false")]
    pub preenrolled_only: Option<bool>,
    /// Pre-enroll every serial number an ABM connection lists
    #[arg(long, value_name = "true|false")]
    pub abm_as_preenrolled: Option<bool>,
    /// Release devices held in Setup Assistant once their baseline is acknowledged
    #[arg(long, value_name = "true|false")]
    pub auto_release: Option<bool>,
    /// Hours of silence after a push before an enrolled device counts as offline
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub offline_after_hours: Option<u32>,
    /// Minutes enrolling may take before a device counts as partially enrolled
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub enrolling_grace_minutes: Option<u32>,
    /// Minutes in Setup Assistant after which a held device is flagged as stuck
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub awaiting_stuck_after_minutes: Option<u32>,
    /// Days activity entries are kept
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub activity_retention_days: Option<u32>,
    /// Unenroll devices offline this many days, inviting them back (0: never, the default)
    #[arg(long, value_name = "N")]
    pub auto_unenroll_after_days: Option<u32>,
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

    fn devices_list(args: &[&str]) -> Result<DevicesList, clap::Error> {
        let all: Vec<&str> = ["devices", "list"].iter().chain(args).copied().collect();
        match parse(&all)? {
            Action::Devices {
                command: DevicesCommand::List(l),
            } => Ok(l),
            other => panic!("not devices list: {other:?}"),
        }
    }

    #[test]
    fn statuses_repeat_or_come_as_a_comma_list() {
        let l = devices_list(&[
            "--status",
            "offline,awaiting_configuration",
            "--status",
            "expected",
            "--search",
            "ada",
            "--connection",
            "north",
            "--sort",
            "last_seen",
            "--desc",
            "--limit",
            "20",
            "--after",
            "WyJ4Il0",
        ])
        .expect("parse");
        assert_eq!(
            l.statuses,
            [
                StatusArg::Offline,
                StatusArg::AwaitingConfiguration,
                StatusArg::Expected
            ]
        );
        assert_eq!(l.search.as_deref(), Some("ada"));
        assert_eq!(l.connection.as_deref(), Some("north"));
        assert_eq!(l.sort, Some(SortArg::LastSeen));
        assert!(l.desc && !l.all && !l.csv);
        assert_eq!((l.limit, l.after.as_deref()), (Some(20), Some("WyJ4Il0")));

        let err = devices_list(&["--status", "enroled"]).expect_err("typo");
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert!(devices_list(&["--sort", "serial-number"]).is_err());
        assert!(devices_list(&["--connection", "no/such"]).is_err());
        assert!(devices_list(&["--limit", "1001"]).is_err());
    }

    #[test]
    fn every_status_has_its_api_name_as_its_value() {
        for s in StatusArg::ALL {
            let v = s.to_possible_value().expect("value");
            assert_eq!(v.get_name(), s.api_name());
        }
        assert_eq!(StatusArg::value_variants().len(), StatusArg::ALL.len());
        for s in SortArg::value_variants() {
            assert_eq!(
                s.to_possible_value().expect("value").get_name(),
                s.api_name()
            );
        }
    }

    #[test]
    fn devices_csv_excludes_paging_but_keeps_filters() {
        let l = devices_list(&["--csv", "--status", "offline", "--sort", "name"]).expect("csv");
        assert!(l.csv);
        for extra in [&["--all"][..], &["--limit", "5"], &["--after", "x"]] {
            let args: Vec<&str> = ["--csv"].iter().chain(extra).copied().collect();
            let err = devices_list(&args).expect_err("conflict");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{extra:?}");
        }
    }

    #[test]
    fn show_counts_and_release_parse() {
        assert!(matches!(
            parse(&["devices", "show", "C02XK1ABJGH5"]),
            Ok(Action::Devices { command: DevicesCommand::Show { key } }) if key == "C02XK1ABJGH5"
        ));
        assert!(matches!(
            parse(&["devices", "counts"]),
            Ok(Action::Devices {
                command: DevicesCommand::Counts
            })
        ));
        assert!(matches!(
            parse(&["release", "UDID-1"]),
            Ok(Action::Release { key }) if key == "UDID-1"
        ));
        assert_eq!(
            parse(&["release"]).expect_err("no key").kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn preenroll_import_flags() {
        let Action::Preenroll {
            command: PreenrollCommand::Import(i),
        } = parse(&[
            "preenroll",
            "import",
            "-",
            "--dry-run",
            "--on-duplicate",
            "skip",
            "--valid-only",
        ])
        .expect("parse")
        else {
            panic!("not import");
        };
        assert_eq!(i.file, PathBuf::from("-"));
        assert!(i.dry_run && i.valid_only);
        assert_eq!(i.on_duplicate, Some(OnDuplicateArg::Skip));
        assert_eq!(OnDuplicateArg::Replace.api_name(), "replace");
        let err = parse(&["preenroll", "import", "f.csv", "--on-duplicate", "merge"])
            .expect_err("bad choice");
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert!(parse(&["preenroll", "import"]).is_err());
        assert!(matches!(
            parse(&["preenroll", "list", "--limit", "10000", "--all"]),
            Ok(Action::Preenroll {
                command: PreenrollCommand::List {
                    limit: Some(10_000),
                    all: true,
                    ..
                }
            })
        ));
        assert!(parse(&["preenroll", "list", "--limit", "10001"]).is_err());
        let Action::Preenroll {
            command: PreenrollCommand::Delete { serials },
        } = parse(&["preenroll", "delete", "A1", "B2"]).expect("delete")
        else {
            panic!("not delete");
        };
        assert_eq!(serials.serials, ["A1", "B2"]);
    }

    fn activity(args: &[&str]) -> Result<ActivityArgs, clap::Error> {
        let all: Vec<&str> = ["activity"].iter().chain(args).copied().collect();
        match parse(&all)? {
            Action::Activity(a) => Ok(a),
            other => panic!("not activity: {other:?}"),
        }
    }

    #[test]
    fn activity_filters_and_relative_times() {
        let a = activity(&[
            "--device",
            "C02X",
            "--actor",
            "token:admin",
            "--type",
            "enrollment",
            "--since",
            "2h",
            "--until",
            "2024-05-01T10:00:00Z",
            "--limit",
            "50",
            "--before",
            "900",
        ])
        .expect("parse");
        assert_eq!(a.device.as_deref(), Some("C02X"));
        assert_eq!(a.kind.as_deref(), Some("enrollment"));
        assert_eq!(a.since, Some(When::Ago(7_200)));
        assert!(matches!(a.until, Some(When::At(_))));
        assert_eq!((a.limit, a.before), (Some(50), Some(900)));
        let err = activity(&["--since", "last week"]).expect_err("bad time");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(activity(&["--limit", "0"]).is_err());
        assert!(activity(&["--before", "-1"]).is_err());
    }

    #[test]
    fn activity_exports_exclude_paging_and_each_other() {
        assert!(activity(&["--csv", "--type", "setup"]).expect("csv").csv);
        assert!(
            activity(&["--jsonl", "--since", "7d"])
                .expect("jsonl")
                .jsonl
        );
        for args in [
            &["--csv", "--jsonl"][..],
            &["--csv", "--all"],
            &["--csv", "--limit", "5"],
            &["--jsonl", "--before", "3"],
            &["--jsonl", "--all"],
        ] {
            let err = activity(args).expect_err("conflict");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
    }

    #[test]
    fn settings_set_needs_a_change_and_typed_values() {
        let Action::Settings {
            command: SettingsCommand::Set(s),
        } = parse(&[
            "settings",
            "set",
            "--preenrolled-only",
            "true",
            "--auto-release",
            "false",
            "--offline-after-hours",
            "48",
        ])
        .expect("parse")
        else {
            panic!("not settings set");
        };
        assert_eq!(s.preenrolled_only, Some(true));
        assert_eq!(s.auto_release, Some(false));
        assert_eq!(s.offline_after_hours, Some(48));
        assert!(s.abm_as_preenrolled.is_none() && s.activity_retention_days.is_none());

        let err = parse(&["settings", "set"]).expect_err("nothing to change");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        for args in [
            &["settings", "set", "--preenrolled-only", "yes"][..],
            &["settings", "set", "--preenrolled-only"],
            &["settings", "set", "--offline-after-hours", "0"],
            &["settings", "set", "--activity-retention-days", "-1"],
            &["settings", "set", "--enrolling-grace-minutes", "5000000000"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        assert!(matches!(
            parse(&["settings", "show"]),
            Ok(Action::Settings {
                command: SettingsCommand::Show
            })
        ));
    }
}
