//! Configuration profiles and device groups: uploads validated as Apple profiles, assignment
//! to groups and devices, and the per-device install state kept in sync with MDM commands.

pub mod payload;
