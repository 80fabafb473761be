//! Check-in messages: what devices PUT to the `CheckInURL` (and, without one, to the
//! `ServerURL`). See Apple's
//! [Check-in](https://developer.apple.com/documentation/devicemanagement/check-in).

use std::fmt;

use plist::Dictionary;
use serde::{Deserialize, Serialize};

use crate::enrollment::{Enrollment, EnrollmentRef};
use crate::fields::{parse_dict, plist_data, Fields};
use crate::ProtoError;

/// Prints the size of a secret instead of the secret.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0)
    }
}

fn redacted(v: &Option<Vec<u8>>) -> Option<Redacted> {
    v.as_ref().map(|b| Redacted(b.len()))
}

/// `Authenticate`: the first message of a new enrollment, sent while the MDM payload is
/// being installed. See
/// [AuthenticateRequest](https://developer.apple.com/documentation/devicemanagement/authenticaterequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// Who sent it (device channel only).
    pub enrollment: Enrollment,
    /// `SerialNumber` (absent for User Enrollments).
    pub serial_number: Option<String>,
    /// `Model`, e.g. `MQ8L3LL/A`.
    pub model: Option<String>,
    /// `ModelName`, e.g. `iPhone`.
    pub model_name: Option<String>,
    /// `ProductName`, e.g. `iPhone15,2`.
    pub product_name: Option<String>,
    /// `OSVersion`, e.g. `17.4.1`.
    pub os_version: Option<String>,
    /// `BuildVersion`, e.g. `21E236`.
    pub build_version: Option<String>,
    /// `DeviceName`.
    pub device_name: Option<String>,
    /// `IMEI`.
    pub imei: Option<String>,
    /// `MEID`.
    pub meid: Option<String>,
}

impl Authenticate {
    fn from_fields(f: &Fields<'_>) -> Result<Self, ProtoError> {
        Ok(Self {
            enrollment: Enrollment::from_fields(f)?,
            serial_number: f.opt_string("SerialNumber")?,
            model: f.opt_string("Model")?,
            model_name: f.opt_string("ModelName")?,
            product_name: f.opt_string("ProductName")?,
            os_version: f.opt_string("OSVersion")?,
            build_version: f.opt_string("BuildVersion")?,
            device_name: f.opt_string("DeviceName")?,
            imei: f.opt_string("IMEI")?,
            meid: f.opt_string("MEID")?,
        })
    }
}

/// `TokenUpdate`: the push token and magic of a device or user channel. The first one
/// activates the enrollment. See
/// [TokenUpdateRequest](https://developer.apple.com/documentation/devicemanagement/tokenupdaterequest).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenUpdate {
    /// Who sent it.
    pub enrollment: Enrollment,
    /// `Token`: the APNs device token (sent as hex in the push URL).
    pub token: Vec<u8>,
    /// `PushMagic`: the string to put in the push payload.
    pub push_magic: String,
    /// `UnlockToken`: lets the server clear the passcode. A secret; absent does not mean
    /// "forget the previous one" (Apple says so explicitly).
    pub unlock_token: Option<Vec<u8>>,
    /// `AwaitingConfiguration`: the device waits in Setup Assistant for `DeviceConfigured`.
    pub awaiting_configuration: bool,
    /// `NotOnConsole` (macOS user channel): the user is not logged in at the console.
    pub not_on_console: bool,
}

impl TokenUpdate {
    fn from_fields(f: &Fields<'_>) -> Result<Self, ProtoError> {
        let token = f
            .opt_data("Token")?
            .ok_or(ProtoError::MissingField("Token"))?;
        if token.is_empty() {
            return Err(ProtoError::InvalidField {
                field: "Token",
                reason: "is empty, so the device could never be woken by a push".to_owned(),
            });
        }
        Ok(Self {
            enrollment: Enrollment::from_fields(f)?,
            token,
            push_magic: f.non_empty_string("PushMagic")?,
            unlock_token: f.opt_data("UnlockToken")?.filter(|t| !t.is_empty()),
            awaiting_configuration: f.bool_or_false("AwaitingConfiguration")?,
            not_on_console: f.bool_or_false("NotOnConsole")?,
        })
    }
}

impl fmt::Debug for TokenUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenUpdate")
            .field("enrollment", &self.enrollment)
            .field("token_len", &self.token.len())
            .field("push_magic", &self.push_magic)
            .field("unlock_token", &redacted(&self.unlock_token))
            .field("awaiting_configuration", &self.awaiting_configuration)
            .field("not_on_console", &self.not_on_console)
            .finish()
    }
}

/// `CheckOut`: the MDM profile was removed (sent best-effort only). See
/// [CheckOutRequest](https://developer.apple.com/documentation/devicemanagement/checkoutrequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOut {
    /// Who sent it.
    pub enrollment: Enrollment,
}

/// `UserAuthenticate`: a macOS user channel asks to be managed. Answering `410 Gone` to the
/// first request declines it. See
/// [UserAuthenticateRequest](https://developer.apple.com/documentation/devicemanagement/userauthenticaterequest).
#[derive(Clone, PartialEq, Eq)]
pub struct UserAuthenticate {
    /// Who sent it (a user channel).
    pub enrollment: Enrollment,
    /// `DigestResponse`: present on the second request of the handshake.
    pub digest_response: Option<String>,
}

impl fmt::Debug for UserAuthenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAuthenticate")
            .field("enrollment", &self.enrollment)
            .field(
                "digest_response",
                &self.digest_response.as_ref().map(|d| Redacted(d.len())),
            )
            .finish()
    }
}

/// `SetBootstrapToken`: a macOS device escrows (or clears) its bootstrap token. See
/// [SetBootstrapTokenRequest](https://developer.apple.com/documentation/devicemanagement/setbootstraptokenrequest).
#[derive(Clone, PartialEq, Eq)]
pub struct SetBootstrapToken {
    /// Who sent it.
    pub enrollment: Enrollment,
    /// `BootstrapToken`. `None` (key absent or empty) means: delete the stored token.
    pub bootstrap_token: Option<Vec<u8>>,
    /// `AwaitingConfiguration`.
    pub awaiting_configuration: bool,
}

impl fmt::Debug for SetBootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetBootstrapToken")
            .field("enrollment", &self.enrollment)
            .field("bootstrap_token", &redacted(&self.bootstrap_token))
            .field("awaiting_configuration", &self.awaiting_configuration)
            .finish()
    }
}

/// `GetBootstrapToken`: a macOS device asks for its escrowed bootstrap token; answer with
/// [`BootstrapTokenResponse`]. See
/// [GetBootstrapTokenRequest](https://developer.apple.com/documentation/devicemanagement/getbootstraptokenrequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetBootstrapToken {
    /// Who sent it.
    pub enrollment: Enrollment,
    /// `AwaitingConfiguration`.
    pub awaiting_configuration: bool,
}

/// `DeclarativeManagement`: the device talks to the declarative-management endpoints through
/// the check-in channel. See
/// [DeclarativeManagementRequest](https://developer.apple.com/documentation/devicemanagement/declarativemanagementrequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarativeManagement {
    /// Who sent it.
    pub enrollment: Enrollment,
    /// `Endpoint`: `tokens`, `declaration-items`, `status` or `declaration/<type>/<id>`.
    pub endpoint: String,
    /// `Data`: a JSON document (for `status`, the status report).
    pub data: Option<Vec<u8>>,
}

/// The `Endpoint` of a [`DeclarativeManagement`] check-in, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclarativeEndpoint<'a> {
    /// `tokens`: the synchronization tokens.
    Tokens,
    /// `declaration-items`: the declaration manifest.
    DeclarationItems,
    /// `status`: a status report in `Data`.
    Status,
    /// `declaration/<type>/<identifier>`: one declaration.
    Declaration {
        /// The declaration type segment (e.g. `configuration`).
        declaration_type: &'a str,
        /// The declaration identifier.
        identifier: &'a str,
    },
    /// Anything else (Apple may add endpoints).
    Other(&'a str),
}

impl DeclarativeManagement {
    /// Decodes [`DeclarativeManagement::endpoint`].
    pub fn endpoint_kind(&self) -> DeclarativeEndpoint<'_> {
        match self.endpoint.as_str() {
            "tokens" => DeclarativeEndpoint::Tokens,
            "declaration-items" => DeclarativeEndpoint::DeclarationItems,
            "status" => DeclarativeEndpoint::Status,
            other => match other
                .strip_prefix("declaration/")
                .and_then(|rest| rest.split_once('/'))
            {
                Some((declaration_type, identifier))
                    if !declaration_type.is_empty() && !identifier.is_empty() =>
                {
                    DeclarativeEndpoint::Declaration {
                        declaration_type,
                        identifier,
                    }
                }
                _ => DeclarativeEndpoint::Other(other),
            },
        }
    }
}

/// `GetToken`: the device asks the server for a token for a service, e.g. `com.apple.maid`
/// (a JWT signed with the ABM server key); answer with [`GetTokenResponse`]. See
/// [GetTokenRequest](https://developer.apple.com/documentation/devicemanagement/gettokenrequest).
#[derive(Clone, PartialEq)]
pub struct GetToken {
    /// Who sent it.
    pub enrollment: Enrollment,
    /// `TokenServiceType`, e.g. `com.apple.maid` or `com.apple.watch.pairing`.
    pub token_service_type: String,
    /// `TokenParameters`: service-specific parameters (may hold a `SecurityToken`).
    pub token_parameters: Option<Dictionary>,
}

impl fmt::Debug for GetToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameter values can be secrets (SecurityToken); show only which keys were sent.
        let keys: Option<Vec<&String>> = self.token_parameters.as_ref().map(|d| d.keys().collect());
        f.debug_struct("GetToken")
            .field("enrollment", &self.enrollment)
            .field("token_service_type", &self.token_service_type)
            .field("token_parameter_keys", &keys)
            .finish()
    }
}

/// A parsed check-in message, one variant per `MessageType`.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckinMessage {
    /// `Authenticate`.
    Authenticate(Authenticate),
    /// `TokenUpdate`.
    TokenUpdate(TokenUpdate),
    /// `CheckOut`.
    CheckOut(CheckOut),
    /// `UserAuthenticate`.
    UserAuthenticate(UserAuthenticate),
    /// `SetBootstrapToken`.
    SetBootstrapToken(SetBootstrapToken),
    /// `GetBootstrapToken`.
    GetBootstrapToken(GetBootstrapToken),
    /// `DeclarativeManagement`.
    DeclarativeManagement(DeclarativeManagement),
    /// `GetToken`.
    GetToken(GetToken),
}

/// Implements `enrollment_ref()` on each message type.
macro_rules! enrollment_accessors {
    ($($ty:ident),*) => {$(
        impl $ty {
            /// The device or user channel this message belongs to.
            pub fn enrollment_ref(&self) -> EnrollmentRef {
                self.enrollment.enrollment_ref()
            }
        }
    )*};
}

enrollment_accessors!(
    Authenticate,
    TokenUpdate,
    CheckOut,
    UserAuthenticate,
    SetBootstrapToken,
    GetBootstrapToken,
    DeclarativeManagement,
    GetToken
);

impl CheckinMessage {
    /// Apple's `MessageType` of this message.
    pub fn message_type(&self) -> &'static str {
        match self {
            Self::Authenticate(_) => "Authenticate",
            Self::TokenUpdate(_) => "TokenUpdate",
            Self::CheckOut(_) => "CheckOut",
            Self::UserAuthenticate(_) => "UserAuthenticate",
            Self::SetBootstrapToken(_) => "SetBootstrapToken",
            Self::GetBootstrapToken(_) => "GetBootstrapToken",
            Self::DeclarativeManagement(_) => "DeclarativeManagement",
            Self::GetToken(_) => "GetToken",
        }
    }

    /// The identity keys of the sender.
    pub fn enrollment(&self) -> &Enrollment {
        match self {
            Self::Authenticate(m) => &m.enrollment,
            Self::TokenUpdate(m) => &m.enrollment,
            Self::CheckOut(m) => &m.enrollment,
            Self::UserAuthenticate(m) => &m.enrollment,
            Self::SetBootstrapToken(m) => &m.enrollment,
            Self::GetBootstrapToken(m) => &m.enrollment,
            Self::DeclarativeManagement(m) => &m.enrollment,
            Self::GetToken(m) => &m.enrollment,
        }
    }

    /// The device or user channel this message belongs to.
    pub fn enrollment_ref(&self) -> EnrollmentRef {
        self.enrollment().enrollment_ref()
    }

    pub(crate) fn from_dict(dict: &Dictionary) -> Result<Self, ProtoError> {
        let f = Fields::new(dict);
        let message_type = f.string("MessageType")?;
        Ok(match message_type.as_str() {
            "Authenticate" => Self::Authenticate(Authenticate::from_fields(&f)?),
            "TokenUpdate" => Self::TokenUpdate(TokenUpdate::from_fields(&f)?),
            "CheckOut" => Self::CheckOut(CheckOut {
                enrollment: Enrollment::from_fields(&f)?,
            }),
            "UserAuthenticate" => Self::UserAuthenticate(UserAuthenticate {
                enrollment: Enrollment::from_fields(&f)?,
                digest_response: f.opt_string("DigestResponse")?,
            }),
            "SetBootstrapToken" => Self::SetBootstrapToken(SetBootstrapToken {
                enrollment: Enrollment::from_fields(&f)?,
                bootstrap_token: f.opt_data("BootstrapToken")?.filter(|t| !t.is_empty()),
                awaiting_configuration: f.bool_or_false("AwaitingConfiguration")?,
            }),
            "GetBootstrapToken" => Self::GetBootstrapToken(GetBootstrapToken {
                enrollment: Enrollment::from_fields(&f)?,
                awaiting_configuration: f.bool_or_false("AwaitingConfiguration")?,
            }),
            "DeclarativeManagement" => Self::DeclarativeManagement(DeclarativeManagement {
                enrollment: Enrollment::from_fields(&f)?,
                endpoint: f.non_empty_string("Endpoint")?,
                data: f.opt_data("Data")?,
            }),
            "GetToken" => Self::GetToken(GetToken {
                enrollment: Enrollment::from_fields(&f)?,
                token_service_type: f.non_empty_string("TokenServiceType")?,
                token_parameters: f.opt_dict("TokenParameters")?.cloned(),
            }),
            _ => return Err(ProtoError::UnknownMessageType(message_type)),
        })
    }
}

/// Parses a check-in body (XML or binary plist) and dispatches on `MessageType`.
///
/// Keys this crate does not know are ignored: Apple adds keys every year.
pub fn parse_checkin(body: &[u8]) -> Result<CheckinMessage, ProtoError> {
    CheckinMessage::from_dict(&parse_dict(body)?)
}

/// The reply to [`GetBootstrapToken`]. An empty token tells the device none is escrowed. See
/// [GetBootstrapTokenResponse](https://developer.apple.com/documentation/devicemanagement/getbootstraptokenresponse).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapTokenResponse {
    /// `BootstrapToken`.
    #[serde(rename = "BootstrapToken", with = "plist_data")]
    pub bootstrap_token: Vec<u8>,
}

impl BootstrapTokenResponse {
    /// The XML plist to send as the `200` body.
    pub fn to_plist(&self) -> Result<Vec<u8>, ProtoError> {
        write_xml(self)
    }
}

impl fmt::Debug for BootstrapTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapTokenResponse")
            .field("bootstrap_token", &Redacted(self.bootstrap_token.len()))
            .finish()
    }
}

/// The reply to [`GetToken`]. See
/// [GetTokenResponse](https://developer.apple.com/documentation/devicemanagement/gettokenresponse).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTokenResponse {
    /// `TokenData`: the token; a string token (such as a JWT) as UTF-8 bytes.
    #[serde(rename = "TokenData", with = "plist_data")]
    pub token_data: Vec<u8>,
}

impl GetTokenResponse {
    /// The XML plist to send as the `200` body.
    pub fn to_plist(&self) -> Result<Vec<u8>, ProtoError> {
        write_xml(self)
    }
}

impl fmt::Debug for GetTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetTokenResponse")
            .field("token_data", &Redacted(self.token_data.len()))
            .finish()
    }
}

fn write_xml<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, value).map_err(ProtoError::Encode)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(endpoint: &str) -> DeclarativeManagement {
        let body = format!(
            "<plist version=\"1.0\"><dict><key>MessageType</key><string>DeclarativeManagement</string>\
             <key>UDID</key><string>U</string><key>Endpoint</key><string>{endpoint}</string></dict></plist>"
        );
        match parse_checkin(body.as_bytes()).unwrap() {
            CheckinMessage::DeclarativeManagement(m) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn declarative_endpoints_decode() {
        assert_eq!(dm("tokens").endpoint_kind(), DeclarativeEndpoint::Tokens);
        assert_eq!(
            dm("declaration-items").endpoint_kind(),
            DeclarativeEndpoint::DeclarationItems
        );
        assert_eq!(dm("status").endpoint_kind(), DeclarativeEndpoint::Status);
        assert_eq!(
            dm("declaration/configuration/com.example.passcode").endpoint_kind(),
            DeclarativeEndpoint::Declaration {
                declaration_type: "configuration",
                identifier: "com.example.passcode"
            }
        );
        assert_eq!(
            dm("declaration/configuration").endpoint_kind(),
            DeclarativeEndpoint::Other("declaration/configuration")
        );
        assert_eq!(
            dm("future").endpoint_kind(),
            DeclarativeEndpoint::Other("future")
        );
    }

    #[test]
    fn reply_data_round_trips_as_plist_data() {
        let token = vec![0u8, 1, 2, 0xff, 0x80];
        let xml = BootstrapTokenResponse {
            bootstrap_token: token.clone(),
        }
        .to_plist()
        .unwrap();
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.contains("<key>BootstrapToken</key>"), "{text}");
        assert!(text.contains("<data>"), "token must be <data>: {text}");
        let back: BootstrapTokenResponse = plist::from_bytes(&xml).unwrap();
        assert_eq!(back.bootstrap_token, token);
        // And read independently of serde.
        let dict = parse_dict(&xml).unwrap();
        assert_eq!(
            dict.get("BootstrapToken").and_then(plist::Value::as_data),
            Some(&token[..])
        );

        let jwt = b"eyJhbGciOiJSUzI1NiJ9.e30.sig".to_vec();
        let xml = GetTokenResponse {
            token_data: jwt.clone(),
        }
        .to_plist()
        .unwrap();
        let dict = parse_dict(&xml).unwrap();
        assert_eq!(
            dict.get("TokenData").and_then(plist::Value::as_data),
            Some(&jwt[..])
        );
        let mut bin = Vec::new();
        plist::to_writer_binary(
            &mut bin,
            &GetTokenResponse {
                token_data: jwt.clone(),
            },
        )
        .unwrap();
        let back: GetTokenResponse = plist::from_bytes(&bin).unwrap();
        assert_eq!(back.token_data, jwt);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let body = br#"<plist version="1.0"><dict>
            <key>MessageType</key><string>TokenUpdate</string>
            <key>UDID</key><string>U</string>
            <key>Token</key><data>AQID</data>
            <key>PushMagic</key><string>magic</string>
            <key>UnlockToken</key><data>c2VjcmV0LXVubG9jaw==</data>
            </dict></plist>"#;
        let msg = parse_checkin(body).unwrap();
        let text = format!("{msg:?}");
        assert!(!text.contains("115, 101, 99"), "{text}"); // "sec" as bytes
        assert!(text.contains("redacted"), "{text}");
        let reply = BootstrapTokenResponse {
            bootstrap_token: b"topsecret".to_vec(),
        };
        assert!(!format!("{reply:?}").contains("116, 111, 112"));
    }
}
