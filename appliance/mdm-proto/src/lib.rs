//! Apple's MDM wire vocabulary, with no I/O: check-in messages, command reports, commands,
//! the ADE `MachineInfo` and the replies the server sends back.
//!
//! Apple's [Device Management](https://developer.apple.com/documentation/devicemanagement)
//! documentation is the authority; each type links the page it follows. Bodies are accepted
//! as XML or binary property lists (never the old ASCII format), keys this crate does not
//! know are ignored (Apple adds some every year), and every parse failure names the Apple
//! key at fault ([`ProtoError`]).
//!
//! Identity: every check-in and report resolves to an [`EnrollmentRef`] whose
//! [`id`](EnrollmentRef::id) is `UDID` (or `EnrollmentID`) for the device channel and
//! `UDID:UserID` for a user channel (Shared iPad users: `UDID:UserShortName`, because
//! their `UserID` is a constant).
//!
//! What it cannot do yet:
//! - the `ReturnToService` check-in and the declarative-management JSON documents
//!   (`Data` of `DeclarativeManagement` is passed through as bytes);
//! - typed results of commands: a [`CommandReport`] exposes the common keys and keeps the
//!   rest in [`CommandReport::raw`];
//! - typed builders for commands beyond [`Command`]; others go through [`payload_from_raw`];
//! - verifying signatures (`Mdm-Signature`, signed MachineInfo): that is `mdm-pki`'s job.

pub mod abm;
mod checkin;
mod command;
mod enrollment;
mod error;
mod fields;
mod machine_info;
mod report;

pub use checkin::{
    parse_checkin, Authenticate, BootstrapTokenResponse, CheckOut, CheckinMessage,
    DeclarativeEndpoint, DeclarativeManagement, GetBootstrapToken, GetToken, GetTokenResponse,
    SetBootstrapToken, TokenUpdate, UserAuthenticate,
};
pub use command::{
    payload_from_raw, Command, CommandPayload, DEFAULT_DEVICE_INFORMATION_QUERIES, KNOWN_COMMANDS,
};
pub use enrollment::{Enrollment, EnrollmentRef, SHARED_IPAD_UNAUTHENTICATED_USER_ID};
pub use error::ProtoError;
pub use fields::plist_data;
pub use machine_info::{
    compare_os_versions, os_version_less_than, parse_machine_info, software_update_required_json,
    MachineInfo,
};
pub use report::{
    parse_device_message, parse_report, CommandReport, CommandStatus, DeviceMessage, ErrorChainItem,
};
