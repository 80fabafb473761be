//! Validation of `POST /profile` bodies with the error codes Apple documents for
//! "Define a Profile".

use base64::Engine;
use serde_json::{Map, Value};

/// Why a profile was refused: the code Apple answers with and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

const STRING_KEYS: &[&str] = &[
    "profile_name",
    "url",
    "configuration_web_url",
    "department",
    "support_phone_number",
    "support_email_address",
    "org_magic",
    "language",
    "region",
];

const BOOL_KEYS: &[&str] = &[
    "allow_pairing",
    "is_supervised",
    "is_multi_user",
    "is_mandatory",
    "await_device_configured",
    "is_mdm_removable",
    "auto_advance_setup",
    "is_return_to_service",
    "do_not_use_profile_from_backup",
];

const STRING_ARRAY_KEYS: &[&str] = &[
    "anchor_certs",
    "supervising_host_certs",
    "skip_setup_items",
    "devices",
];

/// Checks a profile as ABM does. Keys the simulator does not know are accepted, as
/// Apple keeps adding them; known keys must have the documented JSON type
/// (`MALFORMED_REQUEST_BODY` otherwise).
pub(crate) fn validate(profile: &Map<String, Value>) -> Result<(), Rejection> {
    for key in STRING_KEYS {
        if profile.get(*key).is_some_and(|v| !v.is_string()) {
            return Err(reject(
                "MALFORMED_REQUEST_BODY",
                format!("{key} must be a string"),
            ));
        }
    }
    for key in BOOL_KEYS {
        if profile.get(*key).is_some_and(|v| !v.is_boolean()) {
            return Err(reject(
                "MALFORMED_REQUEST_BODY",
                format!("{key} must be true or false"),
            ));
        }
    }
    for key in STRING_ARRAY_KEYS {
        if let Some(v) = profile.get(*key) {
            let ok = v
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string));
            if !ok {
                return Err(reject(
                    "MALFORMED_REQUEST_BODY",
                    format!("{key} must be an array of strings"),
                ));
            }
        }
    }
    let string = |key: &str| profile.get(key).and_then(Value::as_str);
    let flag = |key: &str| profile.get(key).and_then(Value::as_bool);

    match string("profile_name") {
        None => {
            return Err(reject(
                "CONFIG_NAME_REQUIRED",
                "the profile has no profile_name",
            ))
        }
        Some(name) if name.is_empty() || name.chars().count() > 125 => {
            return Err(reject(
                "CONFIG_NAME_INVALID",
                "profile_name must be 1 to 125 characters",
            ))
        }
        Some(_) => {}
    }
    match string("url") {
        None => {
            return Err(reject(
                "CONFIG_URL_REQUIRED",
                "the profile has no MDM server url",
            ))
        }
        Some(url) if !valid_url(url) => {
            return Err(reject(
                "CONFIG_URL_INVALID",
                "url must be an absolute http(s) URL of at most 2000 characters",
            ))
        }
        Some(_) => {}
    }
    if let Some(url) = string("configuration_web_url") {
        if !valid_url(url) {
            return Err(reject(
                "CONFIG_URL_INVALID",
                "configuration_web_url must be an absolute http(s) URL of at most 2000 characters",
            ));
        }
    }
    let bounded = |key: &str, max: usize, code: &'static str| -> Result<(), Rejection> {
        match string(key) {
            Some(v) if v.is_empty() || v.chars().count() > max => Err(reject(
                code,
                format!("{key} must be 1 to {max} characters when present"),
            )),
            _ => Ok(()),
        }
    };
    bounded("department", 125, "DEPARTMENT_INVALID")?;
    bounded("org_magic", 256, "MAGIC_INVALID")?;
    bounded("support_phone_number", 50, "SUPPORT_PHONE_INVALID")?;
    bounded("support_email_address", 250, "SUPPORT_EMAIL_INVALID")?;
    if let Some(email) = string("support_email_address") {
        let valid = email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
        if !valid {
            return Err(reject(
                "SUPPORT_EMAIL_INVALID",
                "support_email_address is not an e-mail address",
            ));
        }
    }
    if flag("is_mdm_removable") == Some(false) && flag("is_supervised") != Some(true) {
        return Err(reject(
            "FLAGS_INVALID",
            "is_mdm_removable can be false only when is_supervised is true",
        ));
    }
    let language = string("language");
    let region = string("region");
    let letters = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic())
    };
    let locale_ok = match (language, region) {
        (None, None) => true,
        (Some(l), None) => letters(l, &[2, 3]),
        (Some(l), Some(r)) => letters(l, &[2, 3]) && letters(r, &[2]),
        (None, Some(_)) => false,
    };
    if !locale_ok {
        return Err(reject(
            "LOCALE_INVALID",
            "language must be an ISO 639 code and region an ISO 3166 code, region only with language",
        ));
    }
    for key in ["anchor_certs", "supervising_host_certs"] {
        let Some(items) = profile.get(key).and_then(Value::as_array) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let der = item.as_str().and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            });
            let parsed = der.as_deref().map(crate::x509::certificate_from_der);
            if !matches!(parsed, Some(Ok(_))) {
                return Err(reject(
                    "MALFORMED_REQUEST_BODY",
                    format!("{key}[{i}] is not a base64 DER certificate"),
                ));
            }
        }
    }
    Ok(())
}

fn valid_url(url: &str) -> bool {
    if url.is_empty() || url.len() > 2000 || url.chars().any(char::is_whitespace) {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some_and(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: Value) -> Option<&'static str> {
        validate(v.as_object().unwrap()).err().map(|r| r.code)
    }

    #[test]
    fn apple_codes_for_each_rule() {
        let ok = json!({"profile_name": "P", "url": "https://mdm.example.lan/mdm/enroll"});
        assert_eq!(code(ok.clone()), None);
        assert_eq!(
            code(json!({"url": "https://a.example"})),
            Some("CONFIG_NAME_REQUIRED")
        );
        assert_eq!(
            code(json!({"profile_name": "", "url": "https://a.example"})),
            Some("CONFIG_NAME_INVALID")
        );
        assert_eq!(
            code(json!({"profile_name": "x".repeat(126), "url": "https://a.example"})),
            Some("CONFIG_NAME_INVALID")
        );
        assert_eq!(
            code(json!({"profile_name": "P"})),
            Some("CONFIG_URL_REQUIRED")
        );
        assert_eq!(
            code(json!({"profile_name": "P", "url": "mdm.example.lan"})),
            Some("CONFIG_URL_INVALID")
        );
        let with = |k: &str, v: Value| {
            let mut p = ok.clone();
            p[k] = v;
            code(p)
        };
        assert_eq!(with("department", json!("")), Some("DEPARTMENT_INVALID"));
        assert_eq!(
            with("org_magic", json!("m".repeat(257))),
            Some("MAGIC_INVALID")
        );
        assert_eq!(
            with("support_phone_number", json!("")),
            Some("SUPPORT_PHONE_INVALID")
        );
        assert_eq!(
            with("support_email_address", json!("nobody")),
            Some("SUPPORT_EMAIL_INVALID")
        );
        assert_eq!(
            with("is_mdm_removable", json!(false)),
            Some("FLAGS_INVALID")
        );
        assert_eq!(with("region", json!("US")), Some("LOCALE_INVALID"));
        assert_eq!(with("language", json!("english")), Some("LOCALE_INVALID"));
        assert_eq!(
            with("is_supervised", json!("yes")),
            Some("MALFORMED_REQUEST_BODY")
        );
        assert_eq!(
            with("anchor_certs", json!(["bm90IGEgY2VydA=="])),
            Some("MALFORMED_REQUEST_BODY")
        );
        assert_eq!(
            with("configuration_web_url", json!("ftp://x.example")),
            Some("CONFIG_URL_INVALID")
        );
        let mut supervised = ok.clone();
        supervised["is_supervised"] = json!(true);
        supervised["is_mdm_removable"] = json!(false);
        supervised["language"] = json!("en");
        supervised["region"] = json!("US");
        supervised["future_key"] = json!({"anything": 1});
        assert_eq!(code(supervised), None);
    }
}
