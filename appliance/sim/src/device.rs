//! The simulated device: identity facts, its Apple-issued identity, enrollment
//! (ADE MachineInfo, web enrollment, enrollment links), profile installation, SCEP and
//! the HTTP session that carries its MDM identity. Check-in messages live in
//! [`crate::checkin`], the command loop in [`crate::commands`].

use std::collections::HashSet;

use base64::Engine;
use der::Encode;
use plist::{Dictionary, Value};
use x509_cert::Certificate;

use crate::apple::{AppleDeviceIdentity, AppleStandIn};
use crate::cms::SignedDataBuilder;
use crate::error::{CryptoError, DeviceError, ProfileError};
use crate::http::{self, HttpClient, HttpResponse, TlsIdentity};
use crate::keys::{KeyAlgorithm, PrivateKey};
use crate::profile::{self, MdmPayload, Profile, ScepPayload};
use crate::scep::{self, EnrollmentRequest, ScepClient};
use crate::webview::WebView;
use crate::x509::{self, CertificateParams};

/// Content type of an ADE MachineInfo POST.
pub const MACHINE_INFO_CONTENT_TYPE: &str = "application/pkcs7-signature";
/// Header carrying base64 signed MachineInfo on the `configuration_web_url` GET.
pub const DEVICE_INFO_HEADER: &str = "x-apple-aspen-deviceinfo";

/// What kind of hardware to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// An iPhone 14 Pro on iOS 17.4.
    IPhone,
    /// An iPad Air (5th generation) on iPadOS 17.4.
    IPad,
    /// A MacBook Air (M2) on macOS 14.4.
    Mac,
}

impl DeviceKind {
    fn is_ios(self) -> bool {
        matches!(self, Self::IPhone | Self::IPad)
    }
}

/// The certificate and key the device authenticates to the MDM server with.
#[derive(Debug, Clone)]
pub struct MdmIdentity {
    /// The SCEP-issued certificate.
    pub certificate: Certificate,
    /// Its key.
    pub key: PrivateKey,
}

/// How the device proves its identity on check-in and command requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityTransport {
    /// Follow the profile: `Mdm-Signature` when `SignMessage` is true, else TLS client auth.
    #[default]
    FromProfile,
    /// Always the `Mdm-Signature` header, never a TLS client certificate.
    SignatureHeader,
    /// Always a TLS client certificate, never the header.
    TlsClientCertificate,
    /// Both at once.
    Both,
}

/// Deliberate identity faults for negative tests.
#[derive(Debug, Clone, Default)]
pub enum IdentityFault {
    /// Present the device's own identity correctly.
    #[default]
    None,
    /// Present no identity at all (no header, no client certificate).
    Omit,
    /// Send the right certificate with a signature that does not verify.
    CorruptSignature,
    /// Present a self-signed certificate the server never issued. As a TLS client
    /// certificate, a server that verifies chains fails the handshake, which surfaces as
    /// [`crate::error::HttpError::Connect`].
    ForeignCertificate,
    /// Present another device's identity (its certificate and key).
    Impersonate(Box<MdmIdentity>),
}

/// A macOS user for user-channel check-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// `UserID`: the user's GUID.
    pub user_id: String,
    /// `UserShortName`.
    pub short_name: String,
    /// `UserLongName`.
    pub long_name: String,
    /// The user channel's push token.
    pub push_token: Vec<u8>,
    /// The user channel's push magic.
    pub push_magic: String,
}

impl SimUser {
    /// A user with a random GUID and push credentials.
    pub fn new(short_name: &str, long_name: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            user_id: uuid::Uuid::new_v4().to_string().to_uppercase(),
            short_name: short_name.to_owned(),
            long_name: long_name.to_owned(),
            push_token: random_bytes(32)?,
            push_magic: uuid::Uuid::new_v4().to_string().to_uppercase(),
        })
    }
}

/// Knobs for the command loop.
#[derive(Debug, Clone)]
pub struct CommandBehaviour {
    /// Answer `NotNow` to these RequestTypes.
    pub not_now_request_types: HashSet<String>,
    /// Answer `NotNow` to this many next commands, whatever they are.
    pub not_now_next: usize,
    /// Safety limit of commands processed by one `run_until_idle`.
    pub max_commands: usize,
}

impl Default for CommandBehaviour {
    fn default() -> Self {
        Self {
            not_now_request_types: HashSet::new(),
            not_now_next: 0,
            max_commands: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionKey {
    trust: Vec<Vec<u8>>,
    tls_identity: Option<Vec<u8>>,
}

/// A simulated iPhone, iPad or Mac.
///
/// The public fields are the facts it reports (MachineInfo, Authenticate,
/// DeviceInformation); change them freely before enrolling.
#[derive(Debug)]
pub struct SimDevice {
    /// Hardware class.
    pub kind: DeviceKind,
    /// `UDID`.
    pub udid: String,
    /// `SerialNumber`.
    pub serial: String,
    /// `Model` as reported by Authenticate and DeviceInformation (e.g. `iPhone15,2`).
    pub model: String,
    /// `ModelName` (e.g. `iPhone`).
    pub model_name: String,
    /// `ProductName` / MachineInfo `PRODUCT` (e.g. `iPhone15,2`).
    pub product: String,
    /// `OSVersion` (e.g. `17.4`).
    pub os_version: String,
    /// `BuildVersion` (e.g. `21E219`).
    pub build_version: String,
    /// `IMEI` (cellular devices only).
    pub imei: Option<String>,
    /// `MEID` (cellular devices only).
    pub meid: Option<String>,
    /// `DeviceName`.
    pub device_name: String,
    /// MachineInfo `LANGUAGE`.
    pub language: String,
    /// Wi-Fi MAC address.
    pub wifi_mac: String,
    /// Bluetooth MAC address.
    pub bluetooth_mac: String,
    /// MachineInfo `MDM_CAN_REQUEST_SOFTWARE_UPDATE`.
    pub can_request_software_update: bool,
    /// The device-channel push token (32 bytes).
    pub push_token: Vec<u8>,
    /// The device-channel push magic.
    pub push_magic: String,
    /// `UnlockToken` (iOS/iPadOS only).
    pub unlock_token: Option<Vec<u8>>,
    /// `AwaitingConfiguration` in TokenUpdate: the device waits in Setup Assistant for
    /// DeviceConfigured.
    pub awaiting_configuration: bool,
    /// `IsSupervised` in DeviceInformation.
    pub supervised: bool,
    /// Key algorithm of the Apple-issued identity that signs MachineInfo.
    pub apple_key_algorithm: KeyAlgorithm,
    /// Command loop behaviour.
    pub commands: CommandBehaviour,
    /// How the MDM identity is presented.
    pub identity_transport: IdentityTransport,
    /// Deliberate identity faults.
    pub identity_fault: IdentityFault,

    pub(crate) apple_identity: Option<AppleDeviceIdentity>,
    pub(crate) trust: Vec<Certificate>,
    pub(crate) enrollment: Option<Profile>,
    pub(crate) identity: Option<MdmIdentity>,
    pub(crate) pending_scep_key: Option<PrivateKey>,
    pub(crate) installed_profiles: Vec<Profile>,
    pub(crate) erased: bool,
    pub(crate) enrolled_via_ade: bool,
    foreign_identity: Option<MdmIdentity>,
    session: Option<(SessionKey, HttpClient)>,
}

fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| CryptoError::KeyGeneration)?;
    Ok(buf)
}

fn random_from(alphabet: &[u8], n: usize) -> Result<String, CryptoError> {
    // Modulo bias is irrelevant for test identifiers.
    Ok(random_bytes(n)?
        .into_iter()
        .map(|b| char::from(alphabet[usize::from(b) % alphabet.len()]))
        .collect())
}

/// Appends the Luhn check digit to a string of digits.
fn luhn_complete(digits: &str) -> String {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

fn random_mac() -> Result<String, CryptoError> {
    Ok(random_bytes(6)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

impl SimDevice {
    /// A device of `kind` with random identifiers and realistic model data.
    pub fn random(kind: DeviceKind) -> Result<Self, CryptoError> {
        let (model, model_name, os_version, build_version, name) = match kind {
            DeviceKind::IPhone => ("iPhone15,2", "iPhone", "17.4", "21E219", "iPhone"),
            DeviceKind::IPad => ("iPad13,16", "iPad", "17.4", "21E219", "iPad"),
            DeviceKind::Mac => ("Mac14,2", "MacBook Air", "14.4", "23E214", "MacBook Air"),
        };
        let udid = if kind.is_ios() {
            format!("00008120-{}", hex::encode_upper(random_bytes(8)?))
        } else {
            uuid::Uuid::new_v4().to_string().to_uppercase()
        };
        let serial = random_from(b"BCDFGHJKLMNPQRSTVWXYZ0123456789", 10)?;
        let (imei, meid) = if kind == DeviceKind::IPhone {
            let body = format!("35{}", random_from(b"0123456789", 12)?);
            let imei = luhn_complete(&body);
            (Some(imei), Some(body))
        } else {
            (None, None)
        };
        Ok(Self {
            kind,
            device_name: format!("Sim {name} {}", &serial[serial.len() - 4..]),
            udid,
            serial,
            model: model.to_owned(),
            model_name: model_name.to_owned(),
            product: model.to_owned(),
            os_version: os_version.to_owned(),
            build_version: build_version.to_owned(),
            imei,
            meid,
            language: "en".to_owned(),
            wifi_mac: random_mac()?,
            bluetooth_mac: random_mac()?,
            can_request_software_update: true,
            push_token: random_bytes(32)?,
            push_magic: uuid::Uuid::new_v4().to_string().to_uppercase(),
            unlock_token: if kind.is_ios() {
                Some(random_bytes(64)?)
            } else {
                None
            },
            awaiting_configuration: false,
            supervised: false,
            apple_key_algorithm: KeyAlgorithm::Rsa2048,
            commands: CommandBehaviour::default(),
            identity_transport: IdentityTransport::default(),
            identity_fault: IdentityFault::default(),
            apple_identity: None,
            trust: Vec::new(),
            enrollment: None,
            identity: None,
            pending_scep_key: None,
            installed_profiles: Vec::new(),
            erased: false,
            enrolled_via_ade: false,
            foreign_identity: None,
            session: None,
        })
    }

    /// Starts a builder from [`Self::random`].
    pub fn builder(kind: DeviceKind) -> Result<SimDeviceBuilder, CryptoError> {
        Ok(SimDeviceBuilder {
            device: Self::random(kind)?,
        })
    }

    /// Trusts the CA certificates in `pem` for TLS (the appliance CA, typically).
    pub fn trust_ca_pem(&mut self, pem: &[u8]) -> Result<(), CryptoError> {
        for cert in x509::certificates_from_pem(pem)? {
            self.trust_ca(cert);
        }
        Ok(())
    }

    /// Trusts `cert` for TLS.
    pub fn trust_ca(&mut self, cert: Certificate) {
        if !self.trust.contains(&cert) {
            self.trust.push(cert);
        }
    }

    /// The installed enrollment profile, if any.
    pub fn enrollment(&self) -> Option<&Profile> {
        self.enrollment.as_ref()
    }

    /// The MDM payload of the installed enrollment profile.
    pub fn mdm_payload(&self) -> Result<&MdmPayload, DeviceError> {
        self.enrollment
            .as_ref()
            .and_then(|p| p.mdm.as_ref())
            .ok_or(DeviceError::NotEnrolled)
    }

    /// The SCEP-issued MDM identity, if enrolled that far.
    pub fn identity(&self) -> Option<&MdmIdentity> {
        self.identity.as_ref()
    }

    /// Profiles installed on the device (enrollment profile first).
    pub fn installed_profiles(&self) -> &[Profile] {
        &self.installed_profiles
    }

    /// How many connections the device's MDM/SCEP session has opened (keep-alive check).
    pub fn connections_opened(&self) -> usize {
        self.session
            .as_ref()
            .map_or(0, |(_, c)| c.connections_opened())
    }

    /// Whether an EraseDevice command has wiped the device.
    pub fn is_erased(&self) -> bool {
        self.erased
    }

    /// Supplies the key the next SCEP enrollment certifies (benchmarks reuse a pool of
    /// pre-generated RSA keys instead of paying for key generation each time).
    pub fn set_scep_key(&mut self, key: PrivateKey) {
        self.pending_scep_key = Some(key);
    }

    /// The MachineInfo plist (keys as Apple documents them for ADE enrollment).
    pub fn machine_info_plist(&self) -> Dictionary {
        let mut d = Dictionary::new();
        d.insert("UDID".into(), self.udid.clone().into());
        d.insert("SERIAL".into(), self.serial.clone().into());
        d.insert("PRODUCT".into(), self.product.clone().into());
        d.insert("VERSION".into(), self.build_version.clone().into());
        d.insert("OS_VERSION".into(), self.os_version.clone().into());
        d.insert("LANGUAGE".into(), self.language.clone().into());
        if let Some(imei) = &self.imei {
            d.insert("IMEI".into(), imei.clone().into());
        }
        if let Some(meid) = &self.meid {
            d.insert("MEID".into(), meid.clone().into());
        }
        d.insert(
            "MDM_CAN_REQUEST_SOFTWARE_UPDATE".into(),
            self.can_request_software_update.into(),
        );
        d
    }

    /// The device's Apple-issued identity from `apple`, issued on first use and reissued
    /// if `apple` is a different stand-in than the one that issued the cached one.
    pub fn apple_identity(
        &mut self,
        apple: &AppleStandIn,
    ) -> Result<&AppleDeviceIdentity, DeviceError> {
        let stale = self
            .apple_identity
            .as_ref()
            .is_none_or(|id| &id.intermediate != apple.intermediate());
        if stale {
            self.apple_identity = Some(apple.issue_device_identity(
                &self.udid,
                &self.serial,
                self.apple_key_algorithm,
            )?);
        }
        self.apple_identity.as_ref().ok_or(DeviceError::NoIdentity)
    }

    /// MachineInfo as DER CMS SignedData with attached content, signed by the device's
    /// Apple identity. Like macOS, it carries the intermediate and the leaf, not the root.
    pub fn signed_machine_info(&mut self, apple: &AppleStandIn) -> Result<Vec<u8>, DeviceError> {
        let xml = plist_xml(&self.machine_info_plist())?;
        let id = self.apple_identity(apple)?;
        Ok(SignedDataBuilder::new(&xml)
            .certificate(id.intermediate.clone())
            .certificate(id.certificate.clone())
            .sign(&id.certificate, &id.key)?)
    }

    /// ADE with a DEP profile `url`: POSTs signed MachineInfo to `enroll_url` and
    /// returns the enrollment profile. A bare base URL (no path) gets the appliance's
    /// `/mdm/enroll` appended. Non-2xx answers (such as the 403
    /// `com.apple.softwareupdate.required`) come back as [`DeviceError::Status`].
    pub async fn ade_enroll(
        &mut self,
        client: &HttpClient,
        enroll_url: &str,
        apple: &AppleStandIn,
    ) -> Result<Vec<u8>, DeviceError> {
        let body = self.signed_machine_info(apple)?;
        let resp = client
            .post(&ade_url(enroll_url), MACHINE_INFO_CONTENT_TYPE, body)
            .await?;
        let profile = profile_body(resp)?;
        self.enrolled_via_ade = true;
        Ok(profile)
    }

    /// ADE with `configuration_web_url`: GETs `url` with `x-apple-aspen-deviceinfo` =
    /// base64 signed MachineInfo and returns the profile the page serves. A bare base
    /// URL gets `/mdm/enroll` appended.
    pub async fn ade_web_enroll(
        &mut self,
        client: &HttpClient,
        url: &str,
        apple: &AppleStandIn,
    ) -> Result<Vec<u8>, DeviceError> {
        let signed = self.signed_machine_info(apple)?;
        let value = base64::engine::general_purpose::STANDARD.encode(signed);
        let headers = http::headers(&[(DEVICE_INFO_HEADER, &value)])?;
        let resp = client.get(&ade_url(url), headers).await?;
        let profile = profile_body(resp)?;
        self.enrolled_via_ade = true;
        Ok(profile)
    }

    /// ADE with `configuration_web_url`, as the web view sees it: GETs `url` with the
    /// signed MachineInfo header and returns what it shows (a profile, or a page such as a
    /// sign-in form).
    pub async fn ade_web_open(
        &mut self,
        client: &HttpClient,
        url: &str,
        apple: &AppleStandIn,
    ) -> Result<WebView, DeviceError> {
        let signed = self.signed_machine_info(apple)?;
        let value = base64::engine::general_purpose::STANDARD.encode(signed);
        let headers = http::headers(&[(DEVICE_INFO_HEADER, &value)])?;
        let view = WebView::from_response(client.get(&ade_url(url), headers).await?);
        if matches!(view, WebView::Profile(_)) {
            self.enrolled_via_ade = true;
        }
        Ok(view)
    }

    /// Submits a page's first form as a person would: `fill` gives the values typed into
    /// named fields; hidden fields keep their values. The action resolves against `page_url`.
    pub async fn web_submit(
        &mut self,
        client: &HttpClient,
        page_url: &str,
        html: &str,
        fill: &[(&str, &str)],
    ) -> Result<WebView, DeviceError> {
        let form = crate::webview::first_form(html).ok_or(DeviceError::NoForm)?;
        let mut body = form_urlencoded::Serializer::new(String::new());
        for input in &form.inputs {
            let typed = fill.iter().find(|(n, _)| *n == input.name).map(|(_, v)| *v);
            body.append_pair(&input.name, typed.unwrap_or(&input.value));
        }
        let action = resolve(page_url, &form.action);
        let resp = client
            .post(
                &action,
                "application/x-www-form-urlencoded",
                body.finish().into_bytes(),
            )
            .await?;
        let view = WebView::from_response(resp);
        if matches!(view, WebView::Profile(_)) {
            self.enrolled_via_ade = true;
        }
        Ok(view)
    }

    /// Manual enrollment: GETs an enrollment-link URL and returns the profile.
    pub async fn manual_enroll(
        &self,
        client: &HttpClient,
        url: &str,
    ) -> Result<Vec<u8>, DeviceError> {
        let resp = client.get(url, Default::default()).await?;
        profile_body(resp)
    }

    /// Installs a signed enrollment profile: verifies the signature (and, with `ca`, that
    /// the signer chains to it), requires `com.apple.mdm` and its SCEP identity payload,
    /// and trusts the profile's `com.apple.security.root` certificates for TLS.
    pub fn install_profile(
        &mut self,
        bytes: &[u8],
        ca: Option<&[Certificate]>,
    ) -> Result<&Profile, DeviceError> {
        let parsed = profile::parse_profile(bytes, ca, true)?;
        if parsed.mdm.is_none() {
            return Err(ProfileError::NoMdmPayload.into());
        }
        for root in &parsed.roots {
            self.trust_ca(root.clone());
        }
        self.installed_profiles
            .retain(|p| p.identifier != parsed.identifier);
        self.installed_profiles.insert(0, parsed.clone());
        self.identity = None;
        self.erased = false;
        self.enrollment = Some(parsed);
        self.enrollment.as_ref().ok_or(DeviceError::NotEnrolled)
    }

    fn scep_payload(&self) -> Result<ScepPayload, DeviceError> {
        self.enrollment
            .as_ref()
            .and_then(|p| p.scep.clone())
            .ok_or(DeviceError::NotEnrolled)
    }

    fn scep_request(&mut self, payload: &ScepPayload) -> Result<EnrollmentRequest, DeviceError> {
        // The payload's Subject, or CN=UDID when it has none (an empty subject would give
        // the self-signed SCEP signer an empty issuer, which some servers reject).
        let subject = if payload.subject.is_empty() {
            x509::name(&[("CN", &self.udid)])?
        } else {
            x509::name_from_rdns(&payload.subject)?
        };
        let key = match self.pending_scep_key.take() {
            Some(k) => k,
            None => PrivateKey::generate_rsa2048()?,
        };
        Ok(EnrollmentRequest {
            subject,
            challenge: payload.challenge.clone(),
            key,
            key_usage: scep::key_usage_from_mask(payload.key_usage),
        })
    }

    /// Runs SCEP for the profile's identity payload and keeps the issued identity.
    pub async fn scep_enroll(&mut self) -> Result<&MdmIdentity, DeviceError> {
        let payload = self.scep_payload()?;
        let request = self.scep_request(&payload)?;
        let certificate = {
            let client = self.session_client(None)?;
            ScepClient::new(client, &payload.url, payload.name.as_deref())
                .enroll(&request)
                .await?
        };
        self.identity = Some(MdmIdentity {
            certificate,
            key: request.key,
        });
        self.identity.as_ref().ok_or(DeviceError::NoIdentity)
    }

    /// Renews the MDM identity with a SCEP RenewalReq signed by the current identity.
    pub async fn renew_identity(&mut self) -> Result<&MdmIdentity, DeviceError> {
        let payload = self.scep_payload()?;
        let current = self.identity.clone().ok_or(DeviceError::NoIdentity)?;
        let mut request = self.scep_request(&payload)?;
        // A renewal is authorised by the current identity, not by the one-time challenge.
        request.challenge = None;
        let certificate = {
            let client = self.session_client(None)?;
            ScepClient::new(client, &payload.url, payload.name.as_deref())
                .renew(&request, &current.certificate, &current.key)
                .await?
        };
        self.identity = Some(MdmIdentity {
            certificate,
            key: request.key,
        });
        self.identity.as_ref().ok_or(DeviceError::NoIdentity)
    }

    /// After [`Self::install_profile`]: SCEP, Authenticate, TokenUpdate.
    pub async fn complete_enrollment(&mut self) -> Result<(), DeviceError> {
        self.scep_enroll().await?;
        self.authenticate().await?;
        self.token_update().await?;
        Ok(())
    }

    /// An HTTP client trusting the device's CAs, presenting `tls_identity` if given.
    /// Kept alive across requests and rebuilt only when trust or identity change.
    pub(crate) fn session_client(
        &mut self,
        tls_identity: Option<&MdmIdentity>,
    ) -> Result<&HttpClient, DeviceError> {
        let key = SessionKey {
            trust: self
                .trust
                .iter()
                .map(|c| c.to_der())
                .collect::<Result<_, _>>()
                .map_err(CryptoError::from)?,
            tls_identity: tls_identity
                .map(|id| id.certificate.to_der())
                .transpose()
                .map_err(CryptoError::from)?,
        };
        let current = self.session.as_ref().is_some_and(|(k, _)| *k == key);
        if !current {
            let tls = tls_identity.map(|id| TlsIdentity {
                chain: vec![id.certificate.clone()],
                key: id.key.clone(),
            });
            let client = HttpClient::new(&self.trust, tls.as_ref())?;
            self.session = Some((key, client));
        }
        self.session
            .as_ref()
            .map(|(_, c)| c)
            .ok_or(DeviceError::NotEnrolled)
    }

    /// The identity to present, after applying [`Self::identity_fault`].
    fn presented_identity(&mut self) -> Result<Option<MdmIdentity>, DeviceError> {
        match &self.identity_fault {
            IdentityFault::None | IdentityFault::CorruptSignature => {
                Ok(Some(self.identity.clone().ok_or(DeviceError::NoIdentity)?))
            }
            IdentityFault::Omit => Ok(None),
            IdentityFault::Impersonate(other) => Ok(Some((**other).clone())),
            IdentityFault::ForeignCertificate => {
                if self.foreign_identity.is_none() {
                    let key = PrivateKey::generate_rsa2048()?;
                    let certificate = x509::self_signed(
                        &CertificateParams::new(x509::name(&[("CN", &self.udid)])?),
                        &key,
                    )?;
                    self.foreign_identity = Some(MdmIdentity { certificate, key });
                }
                Ok(self.foreign_identity.clone())
            }
        }
    }

    /// Closes the device's connection; the next request opens a new one (as after sleep or a
    /// network change). Servers forget per-connection state such as NotNow skips.
    pub async fn disconnect(&mut self) {
        if let Some((_, client)) = self.session.take() {
            client.disconnect().await;
        }
    }

    /// Sends an MDM request (check-in or command report) with the device's identity
    /// presented as configured, and returns the answer whatever its status.
    pub async fn send_mdm(
        &mut self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<HttpResponse, DeviceError> {
        if self.erased {
            return Err(DeviceError::Erased);
        }
        let sign_message = self.mdm_payload()?.sign_message;
        let (use_header, use_tls) = match self.identity_transport {
            IdentityTransport::FromProfile => (sign_message, !sign_message),
            IdentityTransport::SignatureHeader => (true, false),
            IdentityTransport::TlsClientCertificate => (false, true),
            IdentityTransport::Both => (true, true),
        };
        let presented = self.presented_identity()?;
        let mut pairs: Vec<(String, String)> = vec![("content-type".into(), content_type.into())];
        if use_header {
            if let Some(id) = &presented {
                let mut builder = SignedDataBuilder::new(&body)
                    .detached()
                    .certificate(id.certificate.clone());
                if matches!(self.identity_fault, IdentityFault::CorruptSignature) {
                    builder = builder.tamper_signature();
                }
                let cms = builder.sign(&id.certificate, &id.key)?;
                pairs.push((
                    "mdm-signature".into(),
                    base64::engine::general_purpose::STANDARD.encode(cms),
                ));
            }
        }
        let headers = http::headers(
            &pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )?;
        let tls_identity = if use_tls { presented } else { None };
        let client = self.session_client(tls_identity.as_ref())?;
        Ok(client
            .request(::http::Method::PUT, url, headers, body)
            .await?)
    }
}

/// Serialises a dictionary as an XML plist.
pub fn plist_xml(dict: &Dictionary) -> Result<Vec<u8>, plist::Error> {
    let mut out = Vec::new();
    Value::Dictionary(dict.clone()).to_writer_xml(&mut out)?;
    Ok(out)
}

/// The appliance's ADE endpoint when given only its base URL.
fn ade_url(url: &str) -> String {
    let bare = url.parse::<::http::Uri>().is_ok_and(|u| {
        u.path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
    });
    if bare {
        format!("{}/mdm/enroll", url.trim_end_matches('/'))
    } else {
        url.to_owned()
    }
}

/// `action` as an absolute URL: absolute as is, else on `page`'s origin.
fn resolve(page: &str, action: &str) -> String {
    if action.starts_with("https://") || action.starts_with("http://") {
        return action.to_owned();
    }
    let origin_end = page
        .find("://")
        .and_then(|i| page[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(page.len());
    let origin = &page[..origin_end];
    if action.starts_with('/') {
        format!("{origin}{action}")
    } else if action.is_empty() {
        page.to_owned()
    } else {
        format!("{origin}/{action}")
    }
}

fn profile_body(resp: HttpResponse) -> Result<Vec<u8>, DeviceError> {
    if resp.is_success() {
        Ok(resp.body.to_vec())
    } else {
        Err(DeviceError::Status(resp.to_unexpected()))
    }
}

/// Builder for [`SimDevice`]; unset fields keep [`SimDevice::random`]'s values.
#[derive(Debug)]
pub struct SimDeviceBuilder {
    device: SimDevice,
}

impl SimDeviceBuilder {
    /// Sets the UDID.
    pub fn udid(mut self, udid: &str) -> Self {
        self.device.udid = udid.to_owned();
        self
    }

    /// Sets the serial number.
    pub fn serial(mut self, serial: &str) -> Self {
        self.device.serial = serial.to_owned();
        self
    }

    /// Sets model and product (`iPhone15,2`).
    pub fn model(mut self, model: &str) -> Self {
        self.device.model = model.to_owned();
        self.device.product = model.to_owned();
        self
    }

    /// Sets the OS version and build (`17.4`, `21E219`).
    pub fn os(mut self, version: &str, build: &str) -> Self {
        self.device.os_version = version.to_owned();
        self.device.build_version = build.to_owned();
        self
    }

    /// Sets the device name.
    pub fn device_name(mut self, name: &str) -> Self {
        self.device.device_name = name.to_owned();
        self
    }

    /// Sets IMEI and MEID (`None` for devices without cellular).
    pub fn cellular(mut self, imei: Option<&str>, meid: Option<&str>) -> Self {
        self.device.imei = imei.map(str::to_owned);
        self.device.meid = meid.map(str::to_owned);
        self
    }

    /// Reports `AwaitingConfiguration` in TokenUpdate.
    pub fn awaiting_configuration(mut self, awaiting: bool) -> Self {
        self.device.awaiting_configuration = awaiting;
        self
    }

    /// Chooses the Apple identity key algorithm.
    pub fn apple_key_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.device.apple_key_algorithm = algorithm;
        self
    }

    /// Trusts the CAs in `pem` for TLS.
    pub fn trust_ca_pem(mut self, pem: &[u8]) -> Result<Self, CryptoError> {
        self.device.trust_ca_pem(pem)?;
        Ok(self)
    }

    /// Pre-generated key for the SCEP enrollment.
    pub fn scep_key(mut self, key: PrivateKey) -> Self {
        self.device.pending_scep_key = Some(key);
        self
    }

    /// Chooses how the identity is presented.
    pub fn identity_transport(mut self, transport: IdentityTransport) -> Self {
        self.device.identity_transport = transport;
        self
    }

    /// Finishes.
    pub fn build(self) -> SimDevice {
        self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_its_futures_are_send() {
        // Benchmarks and the CLI drive many devices from spawned tasks.
        fn assert_send<T: Send>(_: &T) {}
        let mut d = SimDevice::random(DeviceKind::IPhone).unwrap();
        assert_send(&d);
        let fut = d.run_until_idle();
        assert_send(&fut);
    }

    #[test]
    fn ade_url_completion() {
        assert_eq!(ade_url("https://h:8443"), "https://h:8443/mdm/enroll");
        assert_eq!(ade_url("https://h:8443/"), "https://h:8443/mdm/enroll");
        assert_eq!(ade_url("https://h/custom/path"), "https://h/custom/path");
    }

    #[test]
    fn random_devices_look_real() {
        let phone = SimDevice::random(DeviceKind::IPhone).unwrap();
        assert!(phone.udid.starts_with("00008120-") && phone.udid.len() == 25);
        assert_eq!(phone.serial.len(), 10);
        let imei = phone.imei.as_deref().unwrap();
        assert_eq!(imei.len(), 15);
        assert_eq!(luhn_complete(&imei[..14]), imei);
        assert_eq!(luhn_complete("49015420323751"), "490154203237518");
        assert_eq!(phone.push_token.len(), 32);
        let mac = SimDevice::random(DeviceKind::Mac).unwrap();
        assert!(mac.imei.is_none() && mac.unlock_token.is_none());
        assert!(uuid::Uuid::parse_str(&mac.udid).is_ok());
    }

    #[test]
    fn machine_info_has_the_documented_keys() {
        let d = SimDevice::builder(DeviceKind::IPhone)
            .unwrap()
            .udid("U")
            .serial("S")
            .build();
        let xml = plist_xml(&d.machine_info_plist()).unwrap();
        let back: Dictionary = plist::from_bytes(&xml).unwrap();
        for key in [
            "UDID",
            "SERIAL",
            "PRODUCT",
            "VERSION",
            "OS_VERSION",
            "LANGUAGE",
            "IMEI",
            "MEID",
        ] {
            assert!(back.get(key).and_then(Value::as_string).is_some(), "{key}");
        }
        assert_eq!(
            back.get("MDM_CAN_REQUEST_SOFTWARE_UPDATE")
                .and_then(Value::as_boolean),
            Some(true)
        );
        assert_eq!(back.get("UDID").and_then(Value::as_string), Some("U"));
        assert_eq!(
            back.get("OS_VERSION").and_then(Value::as_string),
            Some("17.4")
        );
    }

    #[test]
    fn signed_machine_info_carries_leaf_and_intermediate_only() {
        let apple = AppleStandIn::generate().unwrap();
        let mut d = SimDevice::random(DeviceKind::IPhone).unwrap();
        let signed = d.signed_machine_info(&apple).unwrap();
        let parsed = crate::cms::parse_signed_data(&signed).unwrap();
        assert_eq!(parsed.certificates.len(), 2);
        assert!(!parsed.certificates.contains(apple.root()));
        let signer = parsed.verify(None, &[]).unwrap();
        crate::cms::verify_signer_chain(&parsed, &signer, std::slice::from_ref(apple.root()))
            .unwrap();
        let info: Dictionary = plist::from_bytes(parsed.content.as_deref().unwrap()).unwrap();
        assert_eq!(
            info.get("UDID").and_then(Value::as_string),
            Some(d.udid.as_str())
        );
        // The identity is cached per stand-in and reissued for another one.
        let first = d.apple_identity(&apple).unwrap().certificate.clone();
        assert_eq!(d.apple_identity(&apple).unwrap().certificate, first);
        let other = AppleStandIn::generate().unwrap();
        assert_ne!(d.apple_identity(&other).unwrap().certificate, first);
    }
}
