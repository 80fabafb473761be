//! The TPM 2.0 sealer: a data key sealed by the TPM, AES-256-GCM for the blobs.
//!
//! The design and its trade-offs are in `docs/design/keystore.md`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::KeyHandle;
use tss_esapi::handles::SessionHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSlot, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::aead::{random, KeyRing, KEY_LEN, MAX_RING};
use crate::blob::hex;
use crate::keyfile::{corrupt, io_err, publish_new, read_existing, replace, Published};
use crate::{resident, Backend, HeldKey, KeystoreError, KeystoreInfo, SealedBlob, Sealer, TpmInfo};

/// The TCTI of the kernel's TPM resource manager, what an appliance uses.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// First bytes of the TPM key file.
const KEY_FILE_MAGIC: &[u8; 8] = b"MDMTKEY1";
/// The key file of a data key bound to PCRs (see [`KeyFile`]).
const POLICY_KEY_FILE_MAGIC: &[u8; 8] = b"MDMTKEY2";
/// PCRs of a PC-client TPM: 0-23.
const PCR_COUNT: u8 = 24;
/// Far above any real file (a TPM2B_PRIVATE and a TPM2B_PUBLIC are each well under 1 KiB);
/// only bounds what is read from a wrong file.
const KEY_FILE_MAX_LEN: u64 = 8 * 1024;

// TPM 2.0 response codes (TPM 2.0 Library, Part 2, section 6.6) this module explains.
pub(crate) const RC_FMT1: u32 = 0x080;
pub(crate) const RC_PARAMETER: u32 = 0x040;
const RC_WARN: u32 = 0x900;
const RC_LOCKOUT: u32 = RC_WARN + 0x021;
const RC_AUTH_FAIL: u32 = RC_FMT1 + 0x00E;
const RC_POLICY_FAIL: u32 = RC_FMT1 + 0x01D;
pub(crate) const RC_INTEGRITY: u32 = RC_FMT1 + 0x01F;
const RC_BAD_AUTH: u32 = RC_FMT1 + 0x022;
// The TSS layer (bits 16..24 of a response code, `tss2_common.h`): the TPM itself, the TPM
// relayed by a resource manager, and the transport.
const LAYER_TPM: u32 = 0;
const LAYER_RESMGR_TPM: u32 = 12;
const LAYER_TCTI: u32 = 10;

/// TPM 2.0 backend: a random 256-bit data key sealed by the TPM, AES-256-GCM for the blobs.
///
/// The data key is sealed once, as a TPM sealed-data object under the TPM's standard ECC
/// storage key (re-derived from the owner hierarchy on every open, never stored), and that
/// object is kept in a key file next to the database. The file is useless without this TPM:
/// its private part is encrypted and integrity-protected by the TPM's storage key. On open the
/// key is unsealed once, through a session salted to the storage key so it never crosses the
/// bus in clear, and kept in zeroized memory; sealing and unsealing blobs after that costs no
/// TPM command.
///
/// Blobs carry [`Backend::Tpm`] and the data key's id, so they are refused by a
/// [`SoftSealer`](crate::SoftSealer) and by another TPM key. The key file is created like the
/// software one (complete or not at all, never replacing an existing file) and is never
/// rewritten: a failure to open it leaves it as it was.
pub struct TpmSealer {
    tcti: String,
    path: PathBuf,
    storage_key_name: Vec<u8>,
    properties: Properties,
    key: KeyRing,
    /// The PCRs (SHA-256 bank) the sealed data key is bound to; empty for no policy.
    pcrs: Vec<u8>,
}

impl TpmSealer {
    /// Opens the TPM through `tcti` (for example [`DEFAULT_TCTI`] or
    /// `swtpm:host=127.0.0.1,port=2321`) and unseals the data key kept in `key_file`, creating
    /// and sealing a new one (file mode 0600) if the file does not exist. The parent directory
    /// must exist.
    ///
    /// Takes tens of milliseconds (a few TPM commands); the TPM connection is closed before it
    /// returns.
    pub fn open_or_create(tcti: &str, key_file: &Path) -> Result<Self, KeystoreError> {
        Self::open_with_pcrs(tcti, key_file, None)
    }

    /// [`open_or_create`](Self::open_or_create), binding the data key to the current values of
    /// `pcrs` (PCR indices 0-23 of the SHA-256 bank; empty for no binding): from then on the
    /// TPM unseals it only while those PCRs hold the same values (a PCR policy, TPM2_PolicyPCR).
    /// `None` keeps whatever binding the key file has (none for a new file).
    ///
    /// When the key file is bound to other PCRs than asked, it is unsealed under its own
    /// policy and sealed again under the new one (the file is replaced atomically). When the
    /// platform state no longer satisfies the file's policy, opening fails with
    /// [`KeystoreError::TpmPolicyMismatch`] and the file is left as it is: the data key is then
    /// recovered from an encrypted backup.
    pub fn open_with_pcrs(
        tcti: &str,
        key_file: &Path,
        pcrs: Option<&[u8]>,
    ) -> Result<Self, KeystoreError> {
        let wanted = pcrs.map(normalize_pcrs).transpose()?;
        let started = Instant::now();
        let conf =
            TctiNameConf::from_str(tcti).map_err(|_| KeystoreError::TpmInterfaceInvalid {
                tcti: tcti.to_owned(),
            })?;
        let target = Target {
            tcti,
            library: tcti_library(&conf),
        };
        // The file is checked before the TPM is touched, so a wrong file is reported as such
        // even where there is no TPM.
        let existing = read_key_file(key_file)?;
        let mut tpm = Tpm::connect(&target, conf)?;
        let storage = tpm.storage_key()?;
        let (mut sealer, created) = match existing {
            Some(file) => (
                Self::unseal_file(&mut tpm, &storage, key_file, &file)?,
                false,
            ),
            None => Self::create(
                &mut tpm,
                &storage,
                key_file,
                wanted.as_deref().unwrap_or(&[]),
            )?,
        };
        if let Some(wanted) = wanted.filter(|w| *w != sealer.pcrs) {
            let data = ring_bytes(&sealer.key.file_keys());
            let file = tpm.seal_checked(&storage, key_file, &data, &wanted)?;
            replace(key_file, &file.encode())?;
            tracing::warn!(
                path = %key_file.display(),
                from = %pcr_list(&sealer.pcrs),
                to = %pcr_list(&wanted),
                "the TPM-sealed master key is now bound to other PCRs"
            );
            sealer.pcrs = wanted;
        }
        drop(tpm);
        tracing::info!(
            tcti,
            path = %key_file.display(),
            key_id = %hex(&sealer.key_id()),
            created,
            elapsed_ms = started.elapsed().as_millis(),
            "TPM keystore opened"
        );
        Ok(sealer)
    }

    /// Opens the TPM through `tcti` and seals `key` (a data key from
    /// [`export_data_key`](Self::export_data_key), typically another TPM's, restored from a
    /// backup) into a NEW key file at `key_file`, and returns the sealer over it: blobs sealed
    /// by the keystore the key came from open with it, on this TPM.
    ///
    /// Refuses, with [`KeystoreError::KeyFileExists`], when a file already exists at
    /// `key_file` (whatever it holds): it is left untouched. As in
    /// [`open_or_create`](Self::open_or_create), the sealed key is unsealed once before the
    /// file is published (mode 0600, complete or not at all); the parent directory must exist.
    pub fn create_with_data_key(
        tcti: &str,
        key_file: &Path,
        key: Zeroizing<[u8; KEY_LEN]>,
    ) -> Result<Self, KeystoreError> {
        let conf =
            TctiNameConf::from_str(tcti).map_err(|_| KeystoreError::TpmInterfaceInvalid {
                tcti: tcti.to_owned(),
            })?;
        let target = Target {
            tcti,
            library: tcti_library(&conf),
        };
        let exists = || KeystoreError::KeyFileExists {
            path: key_file.to_owned(),
        };
        // Checked before the TPM works for nothing; publishing refuses an existing file
        // anyway, so a file appearing meanwhile is still never replaced.
        match key_file.symlink_metadata() {
            Ok(_) => return Err(exists()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect the master key file", key_file)(e)),
        }
        let mut tpm = Tpm::connect(&target, conf)?;
        let storage = tpm.storage_key()?;
        let file = tpm.seal_checked(&storage, key_file, &key[..], &[])?;
        match publish_new(key_file, &file.encode())? {
            Published::Created => {}
            Published::AlreadyExisted => return Err(exists()),
        }
        let sealer = Self::from_parts(&tpm, key_file, storage.name.clone(), vec![key], Vec::new());
        drop(tpm);
        tracing::warn!(
            tcti,
            path = %key_file.display(),
            key_id = %hex(&sealer.key_id()),
            "sealed a master key restored from a backup under this TPM"
        );
        Ok(sealer)
    }

    /// A copy of the data key every blob of this keystore is encrypted under, FOR BACKUPS
    /// ONLY: it goes into an encrypted backup ([`BackupWriter`](crate::BackupWriter)) so that
    /// [`create_with_data_key`](Self::create_with_data_key) can seal it under another TPM.
    ///
    /// Whoever holds this key and the database can open every secret in it, without any TPM:
    /// never log it, store it unencrypted or send it anywhere but into a backup.
    pub fn export_data_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.key.export()
    }

    /// The key file this sealer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TPM interface it was opened through.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The id recorded in every blob this sealer makes (derived from the data key; reveals
    /// nothing about it). Shown in diagnostics to tell keys apart.
    pub fn key_id(&self) -> Vec<u8> {
        self.key.key_id()
    }

    /// The TPM name (hash algorithm id and SHA-256 of the public area) of the storage key the
    /// data key is sealed under. It identifies this TPM's owner hierarchy: it changes with
    /// another TPM or after the owner hierarchy is cleared.
    pub fn storage_key_name(&self) -> &[u8] {
        &self.storage_key_name
    }

    /// The TPM this sealer was opened on: manufacturer, vendor string and firmware version,
    /// as the TPM reported them when the sealer was opened (no TPM command is sent here).
    pub fn tpm_info(&self) -> TpmInfo {
        let p = &self.properties;
        let mut info = TpmInfo::from_properties(
            &self.tcti,
            p.manufacturer,
            &p.vendor_strings,
            p.firmware,
            hex(&self.storage_key_name),
        );
        info.policy_pcrs = self.pcrs.clone();
        info
    }

    /// The PCRs (SHA-256 bank) the data key is bound to; empty when it is not.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    fn from_parts(
        tpm: &Tpm<'_>,
        path: &Path,
        storage_key_name: Vec<u8>,
        mut keys: Vec<Zeroizing<[u8; KEY_LEN]>>,
        pcrs: Vec<u8>,
    ) -> Self {
        // `Tpm::unseal` and the creators always give at least one key.
        let current = if keys.is_empty() {
            Zeroizing::new([0u8; KEY_LEN])
        } else {
            keys.remove(0)
        };
        Self {
            tcti: tpm.target.tcti.to_owned(),
            path: path.to_owned(),
            storage_key_name,
            properties: tpm.properties.clone(),
            key: KeyRing::new(Backend::Tpm, current, keys),
            pcrs,
        }
    }

    /// Seals `keys` (current first) under this TPM and replaces the key file with them.
    fn write_ring(&self, keys: &[Zeroizing<[u8; KEY_LEN]>]) -> Result<(), KeystoreError> {
        let conf =
            TctiNameConf::from_str(&self.tcti).map_err(|_| KeystoreError::TpmInterfaceInvalid {
                tcti: self.tcti.clone(),
            })?;
        let target = Target {
            tcti: &self.tcti,
            library: tcti_library(&conf),
        };
        let mut tpm = Tpm::connect(&target, conf)?;
        let storage = tpm.storage_key()?;
        if storage.name != self.storage_key_name {
            return Err(KeystoreError::TpmKeyFileFromOtherTpm {
                path: self.path.clone(),
                file_storage_key: hex(&self.storage_key_name),
                tpm_storage_key: hex(&storage.name),
            });
        }
        let file = tpm.seal_checked(&storage, &self.path, &ring_bytes(keys), &self.pcrs)?;
        replace(&self.path, &file.encode())
    }

    fn unseal_file(
        tpm: &mut Tpm<'_>,
        storage: &StorageKey,
        path: &Path,
        file: &KeyFile,
    ) -> Result<Self, KeystoreError> {
        // Checked before the TPM is asked: Load would refuse the file too, but only as a failed
        // integrity check, which reads like a damaged file rather than a different TPM.
        if storage.name != file.storage_key_name {
            return Err(KeystoreError::TpmKeyFileFromOtherTpm {
                path: path.to_owned(),
                file_storage_key: hex(&file.storage_key_name),
                tpm_storage_key: hex(&storage.name),
            });
        }
        let keys = tpm.unseal(storage, path, file)?;
        Ok(Self::from_parts(
            tpm,
            path,
            storage.name.clone(),
            keys,
            file.pcrs.clone(),
        ))
    }

    /// Returns the sealer and whether this call created the key file.
    fn create(
        tpm: &mut Tpm<'_>,
        storage: &StorageKey,
        path: &Path,
        pcrs: &[u8],
    ) -> Result<(Self, bool), KeystoreError> {
        // The first boot of a fresh appliance image is when the kernel's entropy is weakest;
        // mixing in the TPM's generator costs one command, and the key is as strong as the
        // better of the two.
        let mut key: Zeroizing<[u8; KEY_LEN]> = random("generate a master key")?;
        let tpm_random = tpm.random(storage, KEY_LEN)?;
        for (k, t) in key.iter_mut().zip(tpm_random.iter()) {
            *k ^= t;
        }
        let file = tpm.seal_checked(storage, path, &key[..], pcrs)?;
        match publish_new(path, &file.encode())? {
            Published::Created => {}
            Published::AlreadyExisted => {
                // Another process created the file first: use its key, not ours.
                let theirs = read_key_file(path)?
                    .ok_or_else(|| corrupt(path, "it appeared and vanished while being created"))?;
                return Ok((Self::unseal_file(tpm, storage, path, &theirs)?, false));
            }
        }
        let sealer = Self::from_parts(tpm, path, storage.name.clone(), vec![key], pcrs.to_vec());
        tracing::warn!(
            path = %path.display(),
            key_id = %hex(&sealer.key_id()),
            "created a new TPM-sealed master key; only this TPM can unseal it: replacing the TPM \
             or clearing its owner hierarchy makes every secret sealed under it unrecoverable"
        );
        Ok((sealer, true))
    }
}

impl Sealer for TpmSealer {
    fn export_data_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        Some(TpmSealer::export_data_key(self))
    }

    fn backend(&self) -> Backend {
        Backend::Tpm
    }

    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<SealedBlob, KeystoreError> {
        self.key.seal(purpose, plaintext)
    }

    fn unseal(
        &self,
        purpose: &str,
        blob: &SealedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        self.key.unseal(purpose, blob)
    }

    fn describe(&self) -> KeystoreInfo {
        KeystoreInfo {
            backend: Backend::Tpm,
            key_id: Some(hex(&self.key_id())),
            previous_key_ids: self.key.previous_key_ids().iter().map(|k| hex(k)).collect(),
            key_file: Some(self.path.clone()),
            tpm: Some(self.tpm_info()),
        }
    }

    fn begin_rotation(&self) -> Result<(), KeystoreError> {
        self.key
            .begin_rotation(&self.path, |keys| self.write_ring(keys))
    }

    fn finish_rotation(&self) -> Result<(), KeystoreError> {
        self.key
            .finish_rotation(&self.path, |keys| self.write_ring(keys))
    }

    fn reseal_blob(&self, blob: &[u8]) -> Result<Option<Vec<u8>>, KeystoreError> {
        self.key.reseal(blob)
    }

    /// A new RSA-2048 key created inside the TPM ([`KeyResidence::Tpm`](crate::KeyResidence)).
    fn create_rsa_key(&self, purpose: &str) -> Result<HeldKey, KeystoreError> {
        resident::create(self, purpose)
    }

    fn rsa_public_key(&self, purpose: &str, key_blob: &[u8]) -> Result<Vec<u8>, KeystoreError> {
        resident::public_key(self, purpose, key_blob)
    }

    fn rsa_decrypt(
        &self,
        purpose: &str,
        key_blob: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        resident::decrypt(self, purpose, key_blob, ciphertext)
    }

    fn rsa_sign_sha256(
        &self,
        purpose: &str,
        key_blob: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        resident::sign(self, purpose, key_blob, message)
    }
}

impl fmt::Debug for TpmSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSealer")
            .field("tcti", &self.tcti)
            .field("path", &self.path)
            .field("storage_key_name", &hex(&self.storage_key_name))
            .field("key_id", &hex(&self.key.key_id()))
            .finish_non_exhaustive()
    }
}

/// The TCTI library a TCTI string needs, with its Debian package, for error messages.
pub(crate) fn tcti_library(conf: &TctiNameConf) -> &'static str {
    match conf {
        TctiNameConf::Device(_) => "libtss2-tcti-device.so.0 (Debian package libtss2-tcti-device0)",
        TctiNameConf::Swtpm(_) => "libtss2-tcti-swtpm.so.0 (Debian package libtss2-tcti-swtpm0)",
        TctiNameConf::Mssim(_) => "libtss2-tcti-mssim.so.0 (Debian package libtss2-tcti-mssim0)",
        TctiNameConf::Tabrmd(_) => {
            "libtss2-tcti-tabrmd.so.0 (Debian package libtss2-tcti-tabrmd0; tpm2-abrmd must be \
             running)"
        }
    }
}

/// The sealed data of a key file: its keys, current first, 32 bytes each.
fn ring_bytes(keys: &[Zeroizing<[u8; KEY_LEN]>]) -> Zeroizing<Vec<u8>> {
    let mut data = Zeroizing::new(Vec::with_capacity(keys.len() * KEY_LEN));
    for key in keys {
        data.extend_from_slice(&key[..]);
    }
    data
}

/// Sorted, distinct PCR indices, each below 24; `Err` says what is wrong.
pub(crate) fn normalize_pcrs(pcrs: &[u8]) -> Result<Vec<u8>, KeystoreError> {
    if let Some(bad) = pcrs.iter().find(|p| **p >= PCR_COUNT) {
        return Err(KeystoreError::PcrPolicyInvalid {
            reason: format!("PCR {bad} does not exist (a TPM has PCRs 0 to 23)"),
        });
    }
    let mut out = pcrs.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `7` or `0, 2, 7`, for messages.
pub(crate) fn pcr_list(pcrs: &[u8]) -> String {
    if pcrs.is_empty() {
        return "none".to_owned();
    }
    pcrs.iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SHA-256 bank selection of `pcrs`.
fn pcr_selection(pcrs: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots = pcrs
        .iter()
        .map(|p| PcrSlot::try_from(1u32 << p))
        .collect::<tss_esapi::Result<Vec<_>>>()?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

/// The storage key template: the usual ECC P-256 storage root key, as
/// `tpm2_createprimary -C o -G ecc256:aes128cfb` makes it, with noDA added. CreatePrimary is
/// deterministic for a given template and owner seed, so every process and boot derives the
/// same key without it ever being stored or made persistent in the TPM's NV memory. ECC
/// rather than RSA because deriving an RSA primary means a prime search that takes seconds on
/// some TPMs.
fn storage_key_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The sealed-data object holding the data key: a keyed-hash object with neither sign nor
/// decrypt, usable with an empty password and no policy (PCR binding is later work), and
/// noDA because an empty password has nothing to guess: a dictionary-attack lockout caused by
/// some other TPM user must not stop the appliance.
fn sealed_object_template(policy: Option<Digest>) -> tss_esapi::Result<Public> {
    // With a policy, userWithAuth is off: the (empty) password must not open what the policy
    // guards, only a session that satisfied the policy can.
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// The TPM key file: the storage key's name and the sealed data key's public and private
/// areas, in the TPM's own marshalling so tpm2-tools can load them for diagnosis.
///
/// ```text
/// "MDMTKEY1" | TPM2B_NAME storage key name | TPM2B_PUBLIC sealed object | TPM2B_PRIVATE sealed object
/// ```
///
/// (Each TPM2B is a big-endian u16 length and that many bytes, to the end of the file.)
///
/// A data key bound to PCRs has a second layout, which lists them (indices into the SHA-256
/// bank, ascending):
///
/// ```text
/// "MDMTKEY2" | TPM2B_NAME storage key name | count u8 | PCR indices | TPM2B_PUBLIC | TPM2B_PRIVATE
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyFile {
    storage_key_name: Vec<u8>,
    /// The PCRs the sealed object's policy covers; empty for none (the first layout).
    pcrs: Vec<u8>,
    /// A marshalled TPMT_PUBLIC.
    public: Vec<u8>,
    /// The contents of a TPM2B_PRIVATE: encrypted and integrity-protected by the storage key.
    private: Vec<u8>,
}

pub(crate) fn push_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field comes from the TPM or from `decode`, both bounded far below 64 KiB; the
    // saturation only keeps this function total.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl KeyFile {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            KEY_FILE_MAGIC.len() + 6 + self.storage_key_name.len() + self.public.len(),
        );
        if self.pcrs.is_empty() {
            out.extend_from_slice(KEY_FILE_MAGIC);
            push_tpm2b(&mut out, &self.storage_key_name);
        } else {
            out.extend_from_slice(POLICY_KEY_FILE_MAGIC);
            push_tpm2b(&mut out, &self.storage_key_name);
            // At most 24 PCRs (`normalize_pcrs`).
            out.push(u8::try_from(self.pcrs.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&self.pcrs);
        }
        push_tpm2b(&mut out, &self.public);
        push_tpm2b(&mut out, &self.private);
        out
    }

    /// Structural parsing; `Err` holds the reason for [`KeystoreError::KeyFileCorrupt`].
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (bound, rest) = if let Some(rest) = bytes.strip_prefix(&KEY_FILE_MAGIC[..]) {
            (false, rest)
        } else if let Some(rest) = bytes.strip_prefix(&POLICY_KEY_FILE_MAGIC[..]) {
            (true, rest)
        } else {
            return Err("it does not start with the TPM key file marker".to_owned());
        };
        let (storage_key_name, mut rest) = take_tpm2b(rest, "storage key name")?;
        let mut pcrs = Vec::new();
        if bound {
            let (count, after) = rest
                .split_first()
                .ok_or("it is truncated in the PCR list")?;
            let count = usize::from(*count);
            if after.len() < count {
                return Err("it is truncated in the PCR list".to_owned());
            }
            let (list, after) = after.split_at(count);
            pcrs = normalize_pcrs(list).map_err(|e| format!("its PCR list is invalid: {e}"))?;
            if pcrs.as_slice() != list || pcrs.is_empty() {
                return Err("its PCR list is not a sorted list of distinct PCRs".to_owned());
            }
            rest = after;
        }
        let (public, rest) = take_tpm2b(rest, "sealed object's public area")?;
        let (private, rest) = take_tpm2b(rest, "sealed object's private area")?;
        if !rest.is_empty() {
            return Err(format!("{} unexpected bytes at the end", rest.len()));
        }
        if storage_key_name.is_empty() || public.is_empty() || private.is_empty() {
            return Err("a field is empty".to_owned());
        }
        Ok(Self {
            storage_key_name: storage_key_name.to_vec(),
            pcrs,
            public: public.to_vec(),
            private: private.to_vec(),
        })
    }
}

pub(crate) fn take_tpm2b<'a>(bytes: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let truncated = || format!("it is truncated in the {what}");
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(truncated)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(truncated());
    }
    Ok(rest.split_at(len))
}

fn read_key_file(path: &Path) -> Result<Option<KeyFile>, KeystoreError> {
    let Some(bytes) = read_existing(path, KEY_FILE_MAX_LEN)? else {
        return Ok(None);
    };
    KeyFile::decode(&bytes)
        .map(Some)
        .map_err(|reason| corrupt(path, reason))
}

/// Where the TPM is, for error messages.
pub(crate) struct Target<'a> {
    pub(crate) tcti: &'a str,
    pub(crate) library: &'static str,
}

/// The TSS response code inside an error from the TPM stack.
///
/// tss-esapi 7 does not expose the raw code, only its `Display` ("Response code value:
/// 0x…"), which is parsed here; the unit tests pin that format.
pub(crate) fn response_code(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let (_, digits) = text.rsplit_once("0x")?;
    u32::from_str_radix(digits.trim(), 16).ok()
}

/// The TPM's own response code (TPM_RC_*) inside a TSS code, when it came from the TPM. For
/// format-one codes the handle/session/parameter number is dropped, so `0x99d` (POLICY_FAIL in
/// session 1) becomes `0x09d`.
pub(crate) fn tpm_rc(code: u32) -> Option<u32> {
    let layer = code >> 16;
    if layer != LAYER_TPM && layer != LAYER_RESMGR_TPM {
        return None;
    }
    let rc = code & 0xffff;
    if rc & RC_FMT1 != 0 {
        Some(rc & (RC_FMT1 | 0x3f))
    } else {
        Some(rc)
    }
}

/// What went wrong in one of libtss2's own layers (not the TPM), by the names of
/// `tss2_common.h`; `None` for codes from the TPM.
fn tss_layer_failure(code: u32) -> Option<String> {
    let layer = match code >> 16 {
        6 => "FAPI",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "marshalling",
        LAYER_TCTI => "TCTI",
        11 => "resource manager",
        _ => return None,
    };
    let what = match code & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        4 => "ABI mismatch",
        5 => "bad reference",
        6 => "insufficient buffer",
        7 => "bad sequence",
        8 => "no connection",
        9 => "try again",
        10 => "input/output error",
        11 => "bad value",
        12 => "not permitted",
        13 => "invalid sessions",
        14 => "no decrypt parameter",
        15 => "no encrypt parameter",
        16 => "bad size",
        17 => "malformed response",
        18 => "insufficient context",
        19 => "insufficient response",
        20 => "incompatible TCTI",
        // What the TCTI loader answers when it cannot dlopen the library.
        21 => "not supported (for the TCTI loader: the library could not be loaded)",
        22 => "bad TCTI structure",
        23 => "out of memory",
        24 => "bad ESYS_TR handle",
        25 => "multiple decrypt sessions",
        26 => "multiple encrypt sessions",
        27 => "the TPM's response HMAC did not verify",
        _ => "unknown failure",
    };
    Some(format!("{layer} layer: {what}"))
}

/// A TPM stack error in words, with its response code when it has one.
fn describe(e: &tss_esapi::Error) -> (Option<u32>, String) {
    let code = response_code(e);
    let text = match code {
        Some(code) => {
            let what = tss_layer_failure(code).unwrap_or_else(|| e.to_string());
            format!("{what}, response code {code:#x}")
        }
        None => e.to_string(),
    };
    (code, text)
}

impl Target<'_> {
    /// Turns a TPM stack error into the error an operator can act on.
    pub(crate) fn error(&self, operation: &'static str, e: tss_esapi::Error) -> KeystoreError {
        let (code, detail) = describe(&e);
        let Some(raw) = code else {
            return KeystoreError::Tpm {
                operation,
                code,
                detail,
            };
        };
        if raw >> 16 == LAYER_TCTI {
            return KeystoreError::TpmUnavailable {
                tcti: self.tcti.to_owned(),
                library: self.library,
                detail: format!("{detail} while trying to {operation}"),
            };
        }
        let authorization = |code_name, advice| KeystoreError::TpmAuthorization {
            operation,
            code: raw,
            code_name,
            advice,
        };
        match tpm_rc(raw) {
            Some(RC_LOCKOUT) => KeystoreError::TpmLockout { operation },
            Some(RC_BAD_AUTH) | Some(RC_AUTH_FAIL) => authorization(
                if tpm_rc(raw) == Some(RC_BAD_AUTH) {
                    "TPM_RC_BAD_AUTH"
                } else {
                    "TPM_RC_AUTH_FAIL"
                },
                "the TPM's owner hierarchy probably has a password (set with `tpm2_changeauth \
                 -c owner`); this release needs it empty: remove it with `tpm2_changeauth -c \
                 owner -p <current password>`",
            ),
            Some(RC_POLICY_FAIL) => authorization(
                "TPM_RC_POLICY_FAIL",
                "the policy the sealed master key is bound to is not satisfied; for a PCR \
                 policy the boot measurements changed since it was sealed: boot the expected \
                 software, or restore the secrets from an encrypted backup",
            ),
            _ => KeystoreError::Tpm {
                operation,
                code,
                detail,
            },
        }
    }
}

/// Reads TPM2_PT_MANUFACTURER through TPM2_PT_FIRMWARE_VERSION_2 (consecutive fixed
/// properties) with one TPM2_GetCapability.
fn read_properties(
    target: &Target<'_>,
    context: &mut Context,
) -> Result<Properties, KeystoreError> {
    const OP: &str = "read its fixed properties";
    let first = PropertyTag::Manufacturer;
    let count = u32::from(PropertyTag::FirmwareVersion2) - u32::from(first) + 1;
    let (data, _more) = context
        .execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::TpmProperties, first.into(), count)
        })
        .map_err(|e| target.error(OP, e))?;
    let CapabilityData::TpmProperties(list) = data else {
        return Err(KeystoreError::Tpm {
            operation: OP,
            code: None,
            detail: "the TPM answered with another kind of capability data".to_owned(),
        });
    };
    let get = |tag| list.find(tag).map(|p| p.value());
    // Every TPM 2.0 reports these fixed properties (TPM 2.0 Library, Part 2, TPM_PT); a TPM
    // that does not is not one this keystore should trust with its key.
    let required = |tag: PropertyTag, name: &str| {
        get(tag).ok_or_else(|| KeystoreError::Tpm {
            operation: OP,
            code: None,
            detail: format!("the TPM did not report {name}"),
        })
    };
    let manufacturer = required(PropertyTag::Manufacturer, "TPM2_PT_MANUFACTURER")?;
    let firmware = [
        required(PropertyTag::FirmwareVersion1, "TPM2_PT_FIRMWARE_VERSION_1")?,
        required(PropertyTag::FirmwareVersion2, "TPM2_PT_FIRMWARE_VERSION_2")?,
    ];
    // The vendor string may be shorter than 16 characters, and then its later parts may be
    // missing (Part 2 says so): keep the ones present, in order.
    let vendor_strings = [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ]
    .into_iter()
    .map_while(get)
    .collect();
    Ok(Properties {
        manufacturer,
        vendor_strings,
        firmware,
    })
}

/// The storage key, loaded.
pub(crate) struct StorageKey {
    pub(crate) handle: KeyHandle,
    pub(crate) name: Vec<u8>,
}

/// The fixed TPM properties shown by [`TpmSealer::tpm_info`], as the TPM reported them.
#[derive(Clone)]
struct Properties {
    manufacturer: u32,
    /// TPM2_PT_VENDOR_STRING_1.., as many as the TPM reported (up to four).
    vendor_strings: Vec<u32>,
    firmware: [u32; 2],
}

/// One connection to the TPM. Dropping it flushes every object and session it loaded.
pub(crate) struct Tpm<'a> {
    pub(crate) target: &'a Target<'a>,
    pub(crate) context: Context,
    /// Read right after connecting, so every sealer can say which TPM it is on.
    properties: Properties,
    /// The HMAC session, salted to the storage key, that encrypts the data key on the wire.
    session: Option<AuthSession>,
}

impl<'a> Tpm<'a> {
    pub(crate) fn connect(
        target: &'a Target<'a>,
        conf: TctiNameConf,
    ) -> Result<Self, KeystoreError> {
        let mut context = Context::new(conf).map_err(|e| KeystoreError::TpmUnavailable {
            tcti: target.tcti.to_owned(),
            library: target.library,
            detail: describe(&e).1,
        })?;
        let properties = read_properties(target, &mut context)?;
        Ok(Self {
            target,
            context,
            properties,
            session: None,
        })
    }

    pub(crate) fn storage_key(&mut self) -> Result<StorageKey, KeystoreError> {
        const OP: &str = "create its storage key under the owner hierarchy";
        let template = storage_key_template().map_err(|e| self.target.error(OP, e))?;
        // The owner hierarchy's authorization is its password, empty on an appliance; nothing
        // secret travels in CreatePrimary, so a plain password session is enough here.
        let handle = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| self.target.error(OP, e))?
            .key_handle;
        let name = self
            .context
            .tr_get_name(handle.into())
            .map_err(|e| self.target.error("read the name of its storage key", e))?
            .value()
            .to_vec();
        Ok(StorageKey { handle, name })
    }

    /// The session that carries the data key, started on first use.
    ///
    /// Salted with the storage key (ESAPI encrypts a random salt to it), with parameter
    /// encryption both ways: the data key goes to the TPM inside Create and comes back from
    /// Unseal encrypted under a session key only this TPM can derive, so someone listening on
    /// the TPM bus or the swtpm socket sees neither.
    pub(crate) fn session(&mut self, storage: &StorageKey) -> Result<AuthSession, KeystoreError> {
        if let Some(session) = self.session {
            return Ok(session);
        }
        const OP: &str = "start an encrypted session";
        let session = self.start_session(OP, Some(storage), SessionType::Hmac)?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        self.context
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(|e| self.target.error(OP, e))?;
        self.session = Some(session);
        Ok(session)
    }

    /// Random bytes from the TPM's generator, encrypted on the wire like the data key they
    /// become part of.
    fn random(
        &mut self,
        storage: &StorageKey,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        const OP: &str = "generate random bytes";
        let session = self.session(storage)?;
        let bytes = self
            .context
            .execute_with_session(Some(session), |ctx| ctx.get_random(len))
            .map_err(|e| self.target.error(OP, e))?;
        if bytes.len() != len {
            return Err(KeystoreError::Tpm {
                operation: OP,
                code: None,
                detail: format!("asked for {len} bytes, got {}", bytes.len()),
            });
        }
        Ok(Zeroizing::new(bytes.value().to_vec()))
    }

    fn seal(
        &mut self,
        storage: &StorageKey,
        keys: &[u8],
        pcrs: &[u8],
    ) -> Result<KeyFile, KeystoreError> {
        const OP: &str = "seal a new master key";
        let policy = if pcrs.is_empty() {
            None
        } else {
            Some(self.pcr_policy_digest(pcrs)?)
        };
        let template = sealed_object_template(policy).map_err(|e| self.target.error(OP, e))?;
        let data = SensitiveData::try_from(keys).map_err(|e| self.target.error(OP, e))?;
        let session = self.session(storage)?;
        let created = self
            .context
            .execute_with_session(Some(session), |ctx| {
                ctx.create(storage.handle, template, None, Some(data), None, None)
            })
            .map_err(|e| self.target.error(OP, e))?;
        let public = created
            .out_public
            .marshall()
            .map_err(|e| self.target.error(OP, e))?;
        Ok(KeyFile {
            storage_key_name: storage.name.clone(),
            pcrs: pcrs.to_vec(),
            public,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Starts a session of `kind` (AES-128-CFB parameter encryption available, SHA-256),
    /// salted to `salt` when given (ESAPI encrypts a random salt to that key, so only this TPM
    /// derives the session key). `operation` names what it is for in errors.
    fn start_session(
        &mut self,
        operation: &'static str,
        salt: Option<&StorageKey>,
        kind: SessionType,
    ) -> Result<AuthSession, KeystoreError> {
        self.context
            .start_auth_session(
                salt.map(|s| s.handle),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| self.target.error(operation, e))?
            .ok_or_else(|| KeystoreError::Tpm {
                operation,
                code: None,
                detail: "the TPM returned no session".to_owned(),
            })
    }

    /// The policy digest of TPM2_PolicyPCR over the current values of `pcrs`, from a trial
    /// session (which computes the digest without authorizing anything).
    fn pcr_policy_digest(&mut self, pcrs: &[u8]) -> Result<Digest, KeystoreError> {
        const OP: &str = "compute the PCR policy";
        let selection = pcr_selection(pcrs).map_err(|e| self.target.error(OP, e))?;
        let trial = self.start_session(OP, None, SessionType::Trial)?;
        let digest = PolicySession::try_from(trial).and_then(|policy| {
            self.context
                .policy_pcr(policy, Digest::default(), selection)?;
            self.context.policy_get_digest(policy)
        });
        let _ = self
            .context
            .flush_context(SessionHandle::from(trial).into());
        digest.map_err(|e| self.target.error(OP, e))
    }

    /// A policy session, salted to the storage key with response encryption, that has
    /// satisfied TPM2_PolicyPCR for `pcrs` (the TPM checks their values when the session is
    /// used, not here).
    fn pcr_session(
        &mut self,
        storage: &StorageKey,
        pcrs: &[u8],
    ) -> Result<AuthSession, KeystoreError> {
        const OP: &str = "start a PCR policy session";
        let selection = pcr_selection(pcrs).map_err(|e| self.target.error(OP, e))?;
        let session = self.start_session(OP, Some(storage), SessionType::Policy)?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_encrypt(true)
            .build();
        let ready = self
            .context
            .tr_sess_set_attributes(session, attributes, mask)
            .and_then(|()| PolicySession::try_from(session))
            .and_then(|policy| {
                self.context
                    .policy_pcr(policy, Digest::default(), selection)
            });
        if let Err(e) = ready {
            let _ = self
                .context
                .flush_context(SessionHandle::from(session).into());
            return Err(self.target.error(OP, e));
        }
        Ok(session)
    }

    /// Seals `key` and unseals the result once before it is published: a file that could not
    /// be opened again would take every secret sealed under it along.
    fn seal_checked(
        &mut self,
        storage: &StorageKey,
        path: &Path,
        keys: &[u8],
        pcrs: &[u8],
    ) -> Result<KeyFile, KeystoreError> {
        let file = self.seal(storage, keys, pcrs)?;
        let back = self.unseal(storage, path, &file)?;
        if !back.iter().flat_map(|k| k.iter()).eq(keys.iter()) {
            return Err(KeystoreError::Tpm {
                operation: "unseal the master key it just sealed",
                code: None,
                detail: "the TPM returned different data".to_owned(),
            });
        }
        Ok(file)
    }

    fn unseal(
        &mut self,
        storage: &StorageKey,
        path: &Path,
        file: &KeyFile,
    ) -> Result<Vec<Zeroizing<[u8; KEY_LEN]>>, KeystoreError> {
        let public = Public::unmarshall(&file.public).map_err(|e| {
            corrupt(
                path,
                format!("its public area does not parse as a TPM object ({e})"),
            )
        })?;
        let private = Private::try_from(file.private.as_slice()).map_err(|e| {
            corrupt(
                path,
                format!("its private area is not a TPM private area ({e})"),
            )
        })?;
        let session = self.session(storage)?;
        let loaded = self
            .context
            .execute_with_session(Some(session), |ctx| {
                ctx.load(storage.handle, private, public)
            })
            .map_err(|e| {
                // The TPM checks the private area's integrity (and its binding to the public
                // area) under the storage key; with the storage key's name already matching,
                // a refusal of the loaded parameters means the file was altered.
                let raw = response_code(&e).unwrap_or(0);
                match tpm_rc(raw) {
                    Some(RC_INTEGRITY) => corrupt(
                        path,
                        format!(
                            "the TPM's integrity check of the sealed master key in it failed \
                             (TPM_RC_INTEGRITY, {raw:#x}): the file was modified"
                        ),
                    ),
                    Some(rc) if rc & RC_FMT1 != 0 && raw & RC_PARAMETER != 0 => corrupt(
                        path,
                        format!(
                            "the TPM refused the sealed master key in it as malformed ({})",
                            describe(&e).1
                        ),
                    ),
                    _ => self.target.error("load the sealed master key", e),
                }
            })?;
        let data = if file.pcrs.is_empty() {
            self.context
                .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()))
                .map_err(|e| self.target.error("unseal the master key", e))
        } else {
            match self.pcr_session(storage, &file.pcrs) {
                Ok(policy) => {
                    let data = self
                        .context
                        .execute_with_session(Some(policy), |ctx| ctx.unseal(loaded.into()))
                        .map_err(|e| {
                            let raw = response_code(&e).unwrap_or(0);
                            if tpm_rc(raw) == Some(RC_POLICY_FAIL) {
                                KeystoreError::TpmPolicyMismatch {
                                    path: path.to_owned(),
                                    pcrs: pcr_list(&file.pcrs),
                                }
                            } else {
                                self.target.error("unseal the master key", e)
                            }
                        });
                    let _ = self
                        .context
                        .flush_context(SessionHandle::from(policy).into());
                    data
                }
                Err(e) => Err(e),
            }
        };
        // Flushed right away rather than when the connection closes: a TPM holds only a
        // handful of loaded objects.
        let _ = self.context.flush_context(loaded.into());
        let data = data?;
        // The current data key, then (only while a rotation is under way) older ones.
        let count = data.len() / KEY_LEN;
        if data.len() % KEY_LEN != 0 || count == 0 || count > MAX_RING {
            return Err(corrupt(
                path,
                format!(
                    "the TPM unsealed {} bytes from it, not 1 to {MAX_RING} keys of {KEY_LEN} \
                     bytes",
                    data.len()
                ),
            ));
        }
        Ok(data
            .value()
            .chunks_exact(KEY_LEN)
            .map(|chunk| {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                key.copy_from_slice(chunk);
                key
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tss(code: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code))
    }

    const TARGET: Target<'static> = Target {
        tcti: "swtpm:host=127.0.0.1,port=2321",
        library: "libtss2-tcti-swtpm.so.0",
    };

    #[test]
    fn raw_response_codes_are_recovered() {
        for code in [
            0x921, 0x99d, 0x9a2, 0x98e, 0x1df, 0xa000a, 0x8000b, 0x0b0921, 0x101,
        ] {
            assert_eq!(response_code(&tss(code)), Some(code), "{code:#x}");
        }
        let wrapper = tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam);
        assert_eq!(response_code(&wrapper), None);
    }

    #[test]
    fn tpm_codes_lose_their_handle_and_session_numbers() {
        assert_eq!(tpm_rc(0x99d), Some(RC_POLICY_FAIL));
        assert_eq!(tpm_rc(0x9a2), Some(RC_BAD_AUTH));
        assert_eq!(tpm_rc(0x1df), Some(RC_INTEGRITY));
        assert_eq!(tpm_rc(0x921), Some(RC_LOCKOUT));
        // Relayed by the resource manager: still the TPM's code.
        assert_eq!(tpm_rc(0x000c_0921), Some(RC_LOCKOUT));
        // From the TCTI or ESAPI layers: not a TPM code.
        assert_eq!(tpm_rc(0x000a_000a), None);
        assert_eq!(tpm_rc(0x0007_0921), None);
    }

    #[test]
    fn lockout_is_explained() {
        let err = TARGET.error("unseal the master key", tss(0x921));
        assert!(matches!(err, KeystoreError::TpmLockout { .. }), "{err}");
        assert!(err.to_string().contains("TPM_RC_LOCKOUT"), "{err}");
        assert!(err.to_string().contains("--clear-lockout"), "{err}");
    }

    #[test]
    fn policy_and_password_failures_are_explained() {
        let err = TARGET.error("unseal the master key", tss(0x99d));
        let text = err.to_string();
        assert!(
            matches!(err, KeystoreError::TpmAuthorization { code: 0x99d, .. }),
            "{text}"
        );
        assert!(text.contains("TPM_RC_POLICY_FAIL, 0x99d"), "{text}");
        assert!(text.contains("PCR"), "{text}");

        for (code, name) in [(0x9a2, "TPM_RC_BAD_AUTH"), (0x98e, "TPM_RC_AUTH_FAIL")] {
            let err = TARGET.error(
                "create its storage key under the owner hierarchy",
                tss(code),
            );
            let text = err.to_string();
            assert!(text.contains(name), "{text}");
            assert!(text.contains("tpm2_changeauth"), "{text}");
        }
    }

    #[test]
    fn transport_failures_name_the_tcti_library() {
        let err = TARGET.error("unseal the master key", tss(0x000a_000a));
        let text = err.to_string();
        assert!(
            matches!(err, KeystoreError::TpmUnavailable { .. }),
            "{text}"
        );
        assert!(text.contains("libtss2-tcti-swtpm.so.0"), "{text}");
        assert!(text.contains("0xa000a"), "{text}");
    }

    #[test]
    fn tss_layer_codes_are_named() {
        let (code, text) = describe(&tss(0x000a_0015));
        assert_eq!(code, Some(0xa0015));
        assert!(text.contains("TCTI layer"), "{text}");
        assert!(text.contains("could not be loaded"), "{text}");
        let (_, text) = describe(&tss(0x0007_001b));
        assert!(text.contains("ESAPI layer"), "{text}");
        // TPM codes keep the library's own wording.
        let (_, text) = describe(&tss(0x9a2));
        assert!(!text.contains("layer"), "{text}");
        assert!(text.ends_with("response code 0x9a2"), "{text}");
    }

    #[test]
    fn other_failures_keep_the_code() {
        let err = TARGET.error("load the sealed master key", tss(0x1df));
        assert!(
            matches!(
                err,
                KeystoreError::Tpm {
                    code: Some(0x1df),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("0x1df"), "{err}");
    }

    #[test]
    fn tcti_strings_map_to_their_library() {
        let lib = |s: &str| tcti_library(&TctiNameConf::from_str(s).unwrap());
        assert!(lib("device:/dev/tpmrm0").contains("libtss2-tcti-device0"));
        assert!(lib("swtpm:host=127.0.0.1,port=2321").contains("libtss2-tcti-swtpm0"));
        assert!(lib("mssim:host=localhost,port=2321").contains("libtss2-tcti-mssim0"));
    }

    fn sample_file() -> KeyFile {
        KeyFile {
            storage_key_name: [&[0x00, 0x0b][..], &[0x5a; 32]].concat(),
            pcrs: Vec::new(),
            public: vec![0x00, 0x08, 0x00, 0x0b, 1, 2, 3],
            private: vec![0x77; 126],
        }
    }

    #[test]
    fn key_file_round_trips_in_tpm2b_framing() {
        let file = sample_file();
        let bytes = file.encode();
        assert!(bytes.starts_with(b"MDMTKEY1\x00\x22\x00\x0b"));
        assert_eq!(bytes.len(), 8 + 2 + 34 + 2 + 7 + 2 + 126);
        assert_eq!(KeyFile::decode(&bytes).unwrap(), file);

        let bound = KeyFile {
            pcrs: vec![0, 7],
            ..sample_file()
        };
        let bytes = bound.encode();
        assert!(bytes.starts_with(b"MDMTKEY2\x00\x22\x00\x0b"));
        assert_eq!(bytes[8 + 2 + 34..8 + 2 + 34 + 3], [2, 0, 7]);
        assert_eq!(KeyFile::decode(&bytes).unwrap(), bound);
        for cut in 0..bytes.len() {
            assert!(KeyFile::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Unsorted, repeated, out of range or empty PCR lists are refused.
        for list in [&[7u8, 0][..], &[7, 7], &[24], &[]] {
            let mut bad = bytes[..8 + 2 + 34].to_vec();
            bad.push(list.len() as u8);
            bad.extend_from_slice(list);
            bad.extend_from_slice(&bytes[8 + 2 + 34 + 3..]);
            assert!(KeyFile::decode(&bad).is_err(), "{list:?}");
        }
    }

    #[test]
    fn pcr_lists_are_checked_and_named() {
        assert_eq!(normalize_pcrs(&[7, 0, 7]).unwrap(), vec![0, 7]);
        assert!(matches!(
            normalize_pcrs(&[24]),
            Err(KeystoreError::PcrPolicyInvalid { .. })
        ));
        assert_eq!(pcr_list(&[0, 7]), "0, 7");
        assert_eq!(pcr_list(&[]), "none");
        assert!(pcr_selection(&[7]).is_ok());
    }

    #[test]
    fn key_file_structure_errors_are_caught() {
        let bytes = sample_file().encode();
        for cut in 0..bytes.len() {
            assert!(KeyFile::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(KeyFile::decode(&longer)
            .unwrap_err()
            .contains("unexpected bytes"));
        let soft = [&b"MDMSKEY1"[..], &[0u8; 32]].concat();
        assert!(KeyFile::decode(&soft).unwrap_err().contains("marker"));
        let empty = KeyFile {
            private: vec![],
            ..sample_file()
        };
        assert!(KeyFile::decode(&empty.encode()).is_err());
    }

    #[test]
    fn templates_build() {
        assert!(matches!(
            storage_key_template().unwrap(),
            Public::Ecc { .. }
        ));
        assert!(matches!(
            sealed_object_template(None).unwrap(),
            Public::KeyedHash { .. }
        ));
        let bound = sealed_object_template(Some(Digest::try_from(vec![1u8; 32]).unwrap())).unwrap();
        assert!(!bound.object_attributes().user_with_auth());
        assert_eq!(bound.auth_policy().value(), &[1u8; 32][..]);
    }
}
