//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::Backend;

/// Why sealing or unsealing failed, or why the key material could not be loaded.
///
/// Each message says what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// The blob was sealed for another purpose than the one asked for.
    #[error(
        "the sealed blob was sealed for purpose {found:?} but was opened as {expected:?}; \
         it was read from the wrong place (check which setting or file it came from)"
    )]
    WrongPurpose {
        /// The purpose the caller asked for.
        expected: String,
        /// The purpose recorded in the blob.
        found: String,
    },

    /// The purpose string is unusable.
    #[error("the purpose {purpose:?} is invalid: {reason}")]
    InvalidPurpose {
        /// The purpose given.
        purpose: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The bytes do not start with the sealed-blob marker.
    #[error(
        "the data is not a sealed blob (it lacks the sealed-blob header); it may be a plaintext \
         secret written by an older version, or the wrong file"
    )]
    NotASealedBlob,

    /// The blob's structure is broken (truncated, impossible lengths, unknown backend id).
    #[error("the sealed blob is corrupted ({reason}); restore it from a backup")]
    CorruptBlob {
        /// What is structurally wrong.
        reason: String,
    },

    /// The blob's structure is fine but its authentication tag does not verify.
    #[error(
        "the sealed blob for purpose {purpose:?} failed its integrity check: it was modified \
         after sealing, or sealed by a different key; restore it from a backup"
    )]
    Unauthentic {
        /// The purpose it was opened for.
        purpose: String,
    },

    /// The blob names a different key than the one this sealer holds.
    #[error(
        "the sealed blob was sealed with key {blob_key_id} but this keystore holds key \
         {keystore_key_id}; the master key was replaced or the data comes from another \
         appliance: restore the matching master key file from a backup"
    )]
    WrongKey {
        /// Hex key id recorded in the blob.
        blob_key_id: String,
        /// Hex key id of this sealer.
        keystore_key_id: String,
    },

    /// The blob was made by another backend.
    #[error(
        "the sealed blob was made by the {blob} backend but this appliance's keystore uses the \
         {sealer} backend; configure the keystore backend that sealed it"
    )]
    WrongBackend {
        /// Backend recorded in the blob.
        blob: Backend,
        /// Backend of this sealer.
        sealer: Backend,
    },

    /// The blob format version is newer (or older) than this build understands.
    #[error(
        "the sealed blob has format version {found}, but this build only reads version \
         {supported}; upgrade the appliance software"
    )]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },

    /// The master key file is readable or writable by group or others.
    #[error(
        "the master key file {path} has mode {mode:04o}, which lets other users read it; \
         run `chmod 600 {path}` (and check who else could have copied it)",
        path = path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The master key file exists but is not what this crate writes.
    #[error(
        "the master key file {path} is unusable ({reason}); restore it from a backup, since data \
         sealed with it cannot be recovered without it",
        path = path.display()
    )]
    KeyFileCorrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The directory that should hold the master key file does not exist.
    #[error(
        "the directory for the master key file {path} does not exist; create the data directory \
         (owned by the service user, mode 0700) first",
        path = path.display()
    )]
    ParentMissing {
        /// The key file path asked for.
        path: PathBuf,
    },

    /// The TPM interface (TCTI) string is not one this build understands.
    #[error(
        "the TPM interface {tcti:?} is not understood; use `device:/dev/tpmrm0` (the kernel's \
         TPM resource manager) on an appliance, or `swtpm:host=127.0.0.1,port=2321` for a \
         software TPM"
    )]
    TpmInterfaceInvalid {
        /// The string given.
        tcti: String,
    },

    /// The TPM could not be reached: no TPM, no access to it, or its TCTI library is missing.
    #[error(
        "could not reach the TPM through {tcti:?} ({detail}); check that the TPM (or software \
         TPM) is there and that this service may open it (for /dev/tpmrm0: the `tss` group, and \
         the device allowed in the systemd unit), and that {library} is installed"
    )]
    TpmUnavailable {
        /// The TCTI used.
        tcti: String,
        /// The TCTI library it needs, with its Debian package.
        library: &'static str,
        /// What the TPM stack reported.
        detail: String,
    },

    /// The TPM is in dictionary-attack lockout.
    #[error(
        "the TPM is in dictionary-attack lockout and refused to {operation} (TPM_RC_LOCKOUT, \
         after too many wrong passwords for some TPM object); wait for the lockout to expire, \
         or clear it with the lockout authorization (`tpm2_dictionarylockout --clear-lockout`)"
    )]
    TpmLockout {
        /// What was being done.
        operation: &'static str,
    },

    /// The TPM refused an authorization (a password or a policy).
    #[error("the TPM refused the authorization to {operation} ({code_name}, {code:#x}): {advice}")]
    TpmAuthorization {
        /// What was being done.
        operation: &'static str,
        /// The TPM response code.
        code: u32,
        /// Its name in the TPM specification.
        code_name: &'static str,
        /// What the operator can do.
        advice: &'static str,
    },

    /// The TPM key file belongs to another TPM (or to this TPM before its owner hierarchy was
    /// cleared).
    #[error(
        "the TPM key file {path} was sealed by another TPM, or by this TPM before its owner \
         hierarchy was cleared (it names storage key {file_storage_key}, this TPM's is \
         {tpm_storage_key}); nothing sealed under it can be unsealed here. Run the appliance \
         on its original TPM, or restore its secrets from an encrypted backup. The file was \
         left untouched",
        path = path.display()
    )]
    TpmKeyFileFromOtherTpm {
        /// The key file.
        path: PathBuf,
        /// Hex name of the storage key recorded in the file.
        file_storage_key: String,
        /// Hex name of this TPM's storage key.
        tpm_storage_key: String,
    },

    /// Any other failure of the TPM or of the TPM software stack.
    #[error("the TPM failed to {operation}: {detail}")]
    Tpm {
        /// What was being done.
        operation: &'static str,
        /// The TSS response code, when there is one.
        code: Option<u32>,
        /// What the TPM stack reported.
        detail: String,
    },

    /// A file operation failed.
    #[error("could not {action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A new key file was asked for where one already exists.
    #[error(
        "the master key file {path} already exists, and a restored key is only written where \
         there is none; move the existing file away (keep it: data sealed under it needs it) \
         and retry",
        path = path.display()
    )]
    KeyFileExists {
        /// The key file.
        path: PathBuf,
    },

    /// The passphrase given for a new backup is too short.
    #[error(
        "the backup passphrase has {found} characters but needs at least {min}: it is the only \
         thing protecting every secret in the backup; several unrelated words make a long one \
         that is easy to type"
    )]
    BackupPassphraseTooShort {
        /// The minimum length, in characters.
        min: usize,
        /// The length given, in characters.
        found: usize,
    },

    /// The first encrypted chunk of a backup does not verify under the key derived from the
    /// passphrase.
    #[error(
        "the backup could not be decrypted: the passphrase is wrong, or the file is damaged \
         (the two cannot be told apart); check the passphrase and retry, and if it is right, \
         use another copy of the backup"
    )]
    BackupWrongPassphrase,

    /// The backup's structure or integrity is broken after its first chunk verified, or its
    /// header is malformed.
    #[error(
        "the backup file is damaged or incomplete ({reason}); nothing from it can be trusted: \
         use another copy of the backup"
    )]
    BackupDamaged {
        /// What is wrong.
        reason: String,
    },

    /// The input does not start with the backup marker.
    #[error(
        "the file is not an appliance backup (it does not start with the MDMBAK01 marker); \
         choose a backup file made by the appliance"
    )]
    NotABackup,

    /// The backup's format version is not the one this build reads.
    #[error(
        "the backup has format version {found}, but this build only reads version \
         {supported}; restore it with appliance software at least as new as the one that made \
         it"
    )]
    BackupUnsupportedVersion {
        /// Version found in the file.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },

    /// The backup names a passphrase key derivation function this build does not know.
    #[error(
        "the backup's passphrase is derived with key derivation function id {found}, which this \
         build does not know (it knows {supported}, Argon2id); restore it with appliance \
         software at least as new as the one that made it"
    )]
    BackupUnsupportedKdf {
        /// KDF id found in the file.
        found: u8,
        /// The KDF id this build knows.
        supported: u8,
    },

    /// The backup's key derivation parameters are outside what this build accepts.
    #[error(
        "the backup's key derivation parameters are out of bounds ({reason}); the file was not \
         made by this appliance software or was altered, and it is refused rather than let it \
         exhaust memory or time"
    )]
    BackupKdfOutOfBounds {
        /// Which parameter, and its bounds.
        reason: String,
    },

    /// The memory for the passphrase key derivation could not be allocated.
    #[error(
        "could not allocate {mib} MiB for the backup passphrase's key derivation; free memory \
         (stop other heavy jobs) and retry"
    )]
    BackupKdfMemory {
        /// The memory needed, in MiB.
        mib: u32,
    },

    /// The caller's description of a new backup cannot be stored.
    #[error(
        "the backup description (meta) cannot be stored: {reason}; keep it a small JSON document"
    )]
    BackupMeta {
        /// What is wrong.
        reason: String,
    },

    /// A backup entry name is unusable (or used twice).
    #[error("the backup entry name {name:?} is invalid: {reason}")]
    BackupEntryName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A backup entry is larger than the caller allows for it.
    #[error(
        "the backup entry {name:?} is {len} bytes long, more than the {max} bytes expected for \
         it; the backup was not made by this appliance software"
    )]
    BackupEntryTooLarge {
        /// The entry.
        name: String,
        /// Its length in the backup.
        len: u64,
        /// The most the caller accepts.
        max: u64,
    },

    /// The data being backed up changed size while it was read.
    #[error(
        "the data for backup entry {name:?} changed while it was being backed up (expected \
         {expected} bytes, {found}); back up a consistent snapshot (a copy of the database made \
         while nothing writes to it) and retry"
    )]
    BackupSourceChanged {
        /// The entry.
        name: String,
        /// The length measured before reading.
        expected: u64,
        /// What was found instead.
        found: &'static str,
    },

    /// Reading or writing a backup stream, or an entry's source or destination, failed.
    #[error("could not {action}: {source}")]
    BackupIo {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A backup writer or reader is used after an error left it in an unknown state.
    #[error(
        "an earlier error stopped this backup or restore; discard what it produced and start \
         it again"
    )]
    BackupAborted,

    /// The sealed master key is bound to PCRs whose values changed since it was sealed.
    #[error(
        "the TPM refused to unseal the master key in {path}: it is bound to PCR {pcrs} \
         (SHA-256 bank) and the platform state measured there changed since it was sealed (a \
         firmware, Secure Boot or boot loader change). Boot the configuration it was sealed \
         under, or recover the key from an encrypted backup: `mdmd restore --key-only \
         --data-dir DIR --from BACKUP` seals it again under the current state and keeps the \
         database. The key file was left untouched"
    )]
    TpmPolicyMismatch {
        /// The key file.
        path: PathBuf,
        /// The PCRs it is bound to, as text.
        pcrs: String,
    },

    /// A PCR policy asked for cannot be used.
    #[error("the TPM PCR policy is invalid: {reason}")]
    PcrPolicyInvalid {
        /// What is wrong.
        reason: String,
    },

    /// This keystore cannot rotate its data key.
    #[error("this keystore cannot rotate its data key")]
    RotationUnsupported,

    /// An RSA decryption with a held key failed: the block was not made for this key or was
    /// damaged. Deliberately says nothing more (padding oracles).
    #[error("the data could not be decrypted with this key: it was encrypted for another key, or damaged")]
    RsaDecryption,

    /// A TPM-resident held key was created inside another TPM (or inside this one before its
    /// owner hierarchy was cleared); it cannot leave that TPM, so it cannot be used here.
    #[error(
        "the key for purpose {purpose:?} was created inside another TPM (it names storage key \
         {key_storage_key}, this TPM's is {tpm_storage_key}): the appliance was restored onto \
         new hardware, or this TPM's owner hierarchy was cleared. A TPM-resident key never \
         leaves the TPM that made it, so it cannot be used here: create a new key pair. For \
         the ABM server token, run `mdmctl abm public-key NAME --new`, upload the new \
         public key to the MDM server in Apple Business Manager, then download its new token \
         and upload it to the appliance"
    )]
    HeldKeyFromOtherTpm {
        /// The purpose the key was made for.
        purpose: String,
        /// Hex name of the storage key recorded in the key's blob.
        key_storage_key: String,
        /// Hex name of this TPM's storage key.
        tpm_storage_key: String,
    },

    /// The cryptographic library refused an operation it should not refuse.
    #[error("the crypto library failed to {0}; the system random generator or aws-lc is broken")]
    Crypto(&'static str),
}
