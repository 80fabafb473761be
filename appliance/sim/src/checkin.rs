//! Check-in messages (Apple "MDM check-in protocol"), built by hand as plist
//! dictionaries and PUT to the profile's CheckInURL with
//! `Content-Type: application/x-apple-aspen-mdm-checkin`.

use plist::{Dictionary, Value};

use crate::device::{plist_xml, SimDevice, SimUser};
use crate::error::DeviceError;
use crate::http::HttpResponse;

/// Content type of check-in requests.
pub const CHECKIN_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm-checkin";

/// Result of the first UserAuthenticate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAuthOutcome {
    /// 410: the server does not manage this user.
    Declined,
    /// 200 with a `DigestChallenge` (empty: no authentication needed).
    DigestChallenge(String),
    /// 200 with an `AuthToken` (answer to the second request).
    AuthToken(String),
}

fn base(message_type: &str, udid: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), message_type.into());
    d.insert("UDID".into(), udid.into());
    d
}

fn user_keys(d: &mut Dictionary, user: &SimUser) {
    d.insert("UserID".into(), user.user_id.clone().into());
    d.insert("UserShortName".into(), user.short_name.clone().into());
    d.insert("UserLongName".into(), user.long_name.clone().into());
}

impl SimDevice {
    fn topic(&self) -> Result<String, DeviceError> {
        Ok(self.mdm_payload()?.topic.clone())
    }

    /// `Authenticate`.
    pub fn authenticate_message(&self) -> Result<Dictionary, DeviceError> {
        let mut d = base("Authenticate", &self.udid);
        d.insert("Topic".into(), self.topic()?.into());
        d.insert("SerialNumber".into(), self.serial.clone().into());
        d.insert("Model".into(), self.model.clone().into());
        d.insert("ModelName".into(), self.model_name.clone().into());
        d.insert("ProductName".into(), self.product.clone().into());
        d.insert("OSVersion".into(), self.os_version.clone().into());
        d.insert("BuildVersion".into(), self.build_version.clone().into());
        d.insert("DeviceName".into(), self.device_name.clone().into());
        if let Some(imei) = &self.imei {
            d.insert("IMEI".into(), imei.clone().into());
        }
        if let Some(meid) = &self.meid {
            d.insert("MEID".into(), meid.clone().into());
        }
        Ok(d)
    }

    /// Device-channel `TokenUpdate`.
    pub fn token_update_message(&self) -> Result<Dictionary, DeviceError> {
        let mut d = base("TokenUpdate", &self.udid);
        d.insert("Topic".into(), self.topic()?.into());
        d.insert("Token".into(), Value::Data(self.push_token.clone()));
        d.insert("PushMagic".into(), self.push_magic.clone().into());
        if let Some(unlock) = &self.unlock_token {
            d.insert("UnlockToken".into(), Value::Data(unlock.clone()));
        }
        d.insert(
            "AwaitingConfiguration".into(),
            self.awaiting_configuration.into(),
        );
        Ok(d)
    }

    /// User-channel `TokenUpdate` (macOS).
    pub fn user_token_update_message(&self, user: &SimUser) -> Result<Dictionary, DeviceError> {
        let mut d = base("TokenUpdate", &self.udid);
        d.insert("Topic".into(), self.topic()?.into());
        user_keys(&mut d, user);
        d.insert("Token".into(), Value::Data(user.push_token.clone()));
        d.insert("PushMagic".into(), user.push_magic.clone().into());
        d.insert("NotOnConsole".into(), false.into());
        Ok(d)
    }

    /// `UserAuthenticate`: the first request without `DigestResponse`, the second with it.
    pub fn user_authenticate_message(
        &self,
        user: &SimUser,
        digest_response: Option<&str>,
    ) -> Dictionary {
        let mut d = base("UserAuthenticate", &self.udid);
        user_keys(&mut d, user);
        if let Some(resp) = digest_response {
            d.insert("DigestResponse".into(), resp.into());
        }
        d
    }

    /// `SetBootstrapToken`.
    pub fn set_bootstrap_token_message(&self, token: &[u8]) -> Dictionary {
        let mut d = base("SetBootstrapToken", &self.udid);
        d.insert("BootstrapToken".into(), Value::Data(token.to_vec()));
        d.insert(
            "AwaitingConfiguration".into(),
            self.awaiting_configuration.into(),
        );
        d
    }

    /// `GetBootstrapToken`.
    pub fn get_bootstrap_token_message(&self) -> Dictionary {
        let mut d = base("GetBootstrapToken", &self.udid);
        d.insert(
            "AwaitingConfiguration".into(),
            self.awaiting_configuration.into(),
        );
        d
    }

    /// `DeclarativeManagement` for `endpoint` (`tokens`, `declaration-items`, `status`,
    /// `declaration/<type>/<id>`), with optional `Data` (JSON bytes).
    pub fn declarative_management_message(
        &self,
        endpoint: &str,
        data: Option<&[u8]>,
    ) -> Dictionary {
        let mut d = base("DeclarativeManagement", &self.udid);
        d.insert("Endpoint".into(), endpoint.into());
        if let Some(data) = data {
            d.insert("Data".into(), Value::Data(data.to_vec()));
        }
        d
    }

    /// `GetToken` for `service_type` (e.g. `com.apple.maid`).
    pub fn get_token_message(
        &self,
        service_type: &str,
        parameters: Option<Dictionary>,
    ) -> Dictionary {
        let mut d = base("GetToken", &self.udid);
        d.insert("TokenServiceType".into(), service_type.into());
        if let Some(p) = parameters {
            d.insert("TokenParameters".into(), Value::Dictionary(p));
        }
        d
    }

    /// `CheckOut`.
    pub fn check_out_message(&self) -> Result<Dictionary, DeviceError> {
        let mut d = base("CheckOut", &self.udid);
        d.insert("Topic".into(), self.topic()?.into());
        Ok(d)
    }

    /// PUTs `message` to the CheckInURL and returns the answer, whatever its status.
    pub async fn checkin(&mut self, message: &Dictionary) -> Result<HttpResponse, DeviceError> {
        let url = self.mdm_payload()?.check_in_url().to_owned();
        let body = plist_xml(message)?;
        self.send_mdm(&url, CHECKIN_CONTENT_TYPE, body).await
    }

    async fn checkin_ok(&mut self, message: &Dictionary) -> Result<HttpResponse, DeviceError> {
        let resp = self.checkin(message).await?;
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(DeviceError::Status(resp.to_unexpected()))
        }
    }

    /// Sends Authenticate; any non-2xx answer is an error.
    pub async fn authenticate(&mut self) -> Result<(), DeviceError> {
        let m = self.authenticate_message()?;
        self.checkin_ok(&m).await.map(drop)
    }

    /// Sends the device-channel TokenUpdate.
    pub async fn token_update(&mut self) -> Result<(), DeviceError> {
        let m = self.token_update_message()?;
        self.checkin_ok(&m).await.map(drop)
    }

    /// Sends a user-channel TokenUpdate.
    pub async fn user_token_update(&mut self, user: &SimUser) -> Result<(), DeviceError> {
        let m = self.user_token_update_message(user)?;
        self.checkin_ok(&m).await.map(drop)
    }

    /// Sends UserAuthenticate and interprets the answer (410 = declined).
    pub async fn user_authenticate(
        &mut self,
        user: &SimUser,
        digest_response: Option<&str>,
    ) -> Result<UserAuthOutcome, DeviceError> {
        let m = self.user_authenticate_message(user, digest_response);
        let resp = self.checkin(&m).await?;
        if resp.status == 410 {
            return Ok(UserAuthOutcome::Declined);
        }
        if !resp.is_success() {
            return Err(DeviceError::Status(resp.to_unexpected()));
        }
        let dict = parse_dict(&resp.body)?;
        if let Some(token) = dict.get("AuthToken").and_then(Value::as_string) {
            return Ok(UserAuthOutcome::AuthToken(token.to_owned()));
        }
        match dict.get("DigestChallenge").and_then(Value::as_string) {
            Some(c) => Ok(UserAuthOutcome::DigestChallenge(c.to_owned())),
            None => Err(DeviceError::MalformedResponse(
                "UserAuthenticate answer has neither DigestChallenge nor AuthToken".into(),
            )),
        }
    }

    /// Escrows a bootstrap token.
    pub async fn set_bootstrap_token(&mut self, token: &[u8]) -> Result<(), DeviceError> {
        let m = self.set_bootstrap_token_message(token);
        self.checkin_ok(&m).await.map(drop)
    }

    /// Fetches the escrowed bootstrap token (`None` when the server has none).
    pub async fn get_bootstrap_token(&mut self) -> Result<Option<Vec<u8>>, DeviceError> {
        let m = self.get_bootstrap_token_message();
        let resp = self.checkin_ok(&m).await?;
        if resp.body.is_empty() {
            return Ok(None);
        }
        let dict = parse_dict(&resp.body)?;
        Ok(dict
            .get("BootstrapToken")
            .and_then(Value::as_data)
            .map(<[u8]>::to_vec)
            .filter(|t| !t.is_empty()))
    }

    /// Sends a DeclarativeManagement check-in and returns the (JSON) body.
    pub async fn declarative_management(
        &mut self,
        endpoint: &str,
        data: Option<&[u8]>,
    ) -> Result<Vec<u8>, DeviceError> {
        let m = self.declarative_management_message(endpoint, data);
        Ok(self.checkin_ok(&m).await?.body.to_vec())
    }

    /// Sends GetToken and returns `TokenData`.
    pub async fn get_token(&mut self, service_type: &str) -> Result<Vec<u8>, DeviceError> {
        let m = self.get_token_message(service_type, None);
        let resp = self.checkin_ok(&m).await?;
        let dict = parse_dict(&resp.body)?;
        dict.get("TokenData")
            .and_then(Value::as_data)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                DeviceError::MalformedResponse("GetToken answer has no TokenData".into())
            })
    }

    /// Sends CheckOut.
    pub async fn check_out(&mut self) -> Result<(), DeviceError> {
        let m = self.check_out_message()?;
        self.checkin_ok(&m).await.map(drop)
    }
}

pub(crate) fn parse_dict(body: &[u8]) -> Result<Dictionary, DeviceError> {
    let value: Value = plist::from_bytes(body)
        .map_err(|e| DeviceError::MalformedResponse(format!("not a plist: {e}")))?;
    value
        .into_dictionary()
        .ok_or_else(|| DeviceError::MalformedResponse("plist is not a dictionary".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceKind;
    use crate::profile::tests::{ca_and_signer, sample_profile, signed};

    fn enrolled(kind: DeviceKind) -> SimDevice {
        let (ca, signer, key) = ca_and_signer();
        let mut d = SimDevice::random(kind).unwrap();
        d.install_profile(
            &signed(&sample_profile(&ca), &signer, &key, &ca),
            Some(&[ca]),
        )
        .unwrap();
        d
    }

    fn round_trip(d: &Dictionary) -> Dictionary {
        let xml = plist_xml(d).unwrap();
        assert!(xml.starts_with(b"<?xml"));
        plist::from_bytes(&xml).unwrap()
    }

    #[test]
    fn authenticate_and_token_update_keys() {
        let d = enrolled(DeviceKind::IPhone);
        let auth = round_trip(&d.authenticate_message().unwrap());
        for key in [
            "MessageType",
            "UDID",
            "Topic",
            "SerialNumber",
            "Model",
            "ModelName",
            "ProductName",
            "OSVersion",
            "BuildVersion",
            "DeviceName",
            "IMEI",
            "MEID",
        ] {
            assert!(auth.get(key).and_then(Value::as_string).is_some(), "{key}");
        }
        assert_eq!(
            auth.get("Topic").and_then(Value::as_string),
            Some("com.apple.mgmt.External.0b7c9a2e")
        );

        let tu = round_trip(&d.token_update_message().unwrap());
        assert_eq!(
            tu.get("MessageType").and_then(Value::as_string),
            Some("TokenUpdate")
        );
        assert_eq!(
            tu.get("Token").and_then(Value::as_data).map(<[u8]>::len),
            Some(32)
        );
        assert!(
            uuid::Uuid::parse_str(tu.get("PushMagic").and_then(Value::as_string).unwrap()).is_ok()
        );
        assert!(tu.get("UnlockToken").and_then(Value::as_data).is_some());
        assert_eq!(
            tu.get("AwaitingConfiguration").and_then(Value::as_boolean),
            Some(false)
        );
    }

    #[test]
    fn other_checkin_messages() {
        let d = enrolled(DeviceKind::Mac);
        assert!(d.authenticate_message().unwrap().get("IMEI").is_none());
        let user = SimUser::new("alice", "Alice Example").unwrap();
        let utu = round_trip(&d.user_token_update_message(&user).unwrap());
        assert_eq!(
            utu.get("UserShortName").and_then(Value::as_string),
            Some("alice")
        );
        assert_eq!(
            utu.get("UserLongName").and_then(Value::as_string),
            Some("Alice Example")
        );
        assert!(utu.get("UnlockToken").is_none());
        let ua = round_trip(&d.user_authenticate_message(&user, Some("digest")));
        assert_eq!(
            ua.get("DigestResponse").and_then(Value::as_string),
            Some("digest")
        );
        let sbt = round_trip(&d.set_bootstrap_token_message(b"tok"));
        assert_eq!(
            sbt.get("BootstrapToken").and_then(Value::as_data),
            Some(&b"tok"[..])
        );
        let dm = round_trip(&d.declarative_management_message("tokens", Some(b"{}")));
        assert_eq!(
            dm.get("Endpoint").and_then(Value::as_string),
            Some("tokens")
        );
        assert_eq!(dm.get("Data").and_then(Value::as_data), Some(&b"{}"[..]));
        let gt = round_trip(&d.get_token_message("com.apple.maid", None));
        assert_eq!(
            gt.get("TokenServiceType").and_then(Value::as_string),
            Some("com.apple.maid")
        );
        let co = round_trip(&d.check_out_message().unwrap());
        assert_eq!(
            co.get("MessageType").and_then(Value::as_string),
            Some("CheckOut")
        );
        assert_eq!(
            round_trip(&d.get_bootstrap_token_message())
                .get("MessageType")
                .and_then(Value::as_string),
            Some("GetBootstrapToken")
        );
    }

    #[test]
    fn messages_need_an_enrollment() {
        let d = SimDevice::random(DeviceKind::IPhone).unwrap();
        assert!(matches!(
            d.authenticate_message(),
            Err(DeviceError::NotEnrolled)
        ));
    }
}
