//! `mdm-sim`: a simulated Apple device and a stand-in for Apple's device-identity CA,
//! for testing the MDM appliance end to end without hardware.
//!
//! It is written independently of the server crates (`mdm-proto`, `mdm-pki`,
//! `mdm-service`, `mdm-web`) from Apple's documentation and RFC 8894, so that it cannot
//! share their bugs. What a device does, in order:
//!
//! 1. [`apple::AppleStandIn`] plays Apple: a root, an "Apple iPhone Device CA"
//!    intermediate, and per-device identities that sign MachineInfo.
//! 2. [`device::SimDevice`] obtains an enrollment profile: ADE
//!    ([`device::SimDevice::ade_enroll`], [`device::SimDevice::ade_web_enroll`]) or an
//!    enrollment link ([`device::SimDevice::manual_enroll`]), then installs it
//!    ([`device::SimDevice::install_profile`]), verifying its CMS signature.
//! 3. [`scep`] obtains the MDM identity (PKCSReq, RenewalReq).
//! 4. [`checkin`] sends Authenticate, TokenUpdate and the other check-in messages, with
//!    the identity as an `Mdm-Signature` header or TLS client certificate; faults can be
//!    injected ([`device::IdentityFault`]).
//! 5. [`commands`] runs the command loop with realistic reports.
//!
//! 6. [`apns`] stands in for Apple Push Notification service: the MDM server pushes to
//!    it over HTTP/2 with its push certificate, and [`apns::wake_on_push`] makes the
//!    device run its command loop when its push arrives.
//!
//! The building blocks ([`cms`], [`x509`], [`keys`], [`http`]) are public so tests and
//! fakes can craft and inspect messages.
//!
//! Not implemented yet: SCEP CertPoll after PENDING, ACME identity payloads,
//! user-channel command sessions, encrypted profiles, the two-step UserAuthenticate
//! digest computation, BER (indefinite-length) CMS input.

pub mod abm;
pub mod apns;
pub mod apple;
pub mod checkin;
pub mod cms;
pub mod commands;
pub mod device;
pub mod error;
pub mod http;
pub mod keys;
pub mod oids;
pub mod profile;
pub mod scep;
pub mod webview;
pub mod x509;

pub use apple::AppleStandIn;
pub use device::{DeviceKind, SimDevice};
pub use http::HttpClient;
