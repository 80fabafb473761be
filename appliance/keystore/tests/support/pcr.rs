//! Changing platform state on a software TPM, for the PCR policy tests.
//!
//! Shared by `tests/pcr_policy.rs` and the appliance's `tests/tests/tpm.rs` through `#[path]`.

use std::str::FromStr as _;

use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// Extends PCR 7 of the TPM behind `tcti` (SHA-256 bank), as a Secure Boot change does at the
/// next boot.
pub fn extend_pcr7(tcti: &str) {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let mut values = DigestValues::new();
    values.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(vec![0xab; 32]).unwrap(),
    );
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.pcr_extend(PcrHandle::Pcr7, values)
    })
    .unwrap();
}
