//! Reading Apple's error answers: the body's code and message, and what the client does next.

use std::time::{Duration, SystemTime};

use mdm_service::ports::AbmError;
use time::macros::format_description;
use time::PrimitiveDateTime;

/// Longest message kept from an error body. Apple's are one sentence; anything longer is a
/// proxy's or load balancer's HTML page.
const MAX_MESSAGE: usize = 200;

/// The code and message of an error answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AppleError {
    /// `T_C_NOT_SIGNED`, `EXHAUSTED_CURSOR`, ...; empty when the body has none.
    pub(crate) code: String,
    pub(crate) message: String,
}

impl AppleError {
    /// Parses the three shapes Apple uses: bare text (`FORBIDDEN`), a JSON string
    /// (`"T_C_NOT_SIGNED"`) and a JSON object (`{"code": ..., "message": ...}`).
    pub(crate) fn parse(body: &[u8]) -> AppleError {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.starts_with('{') {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) {
                let field = |name: &str| {
                    map.get(name)
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                };
                if let Some(code) = field("code") {
                    return AppleError {
                        code,
                        message: clip(&field("message").unwrap_or_default()),
                    };
                }
            }
        } else if text.starts_with('"') {
            if let Ok(inner) = serde_json::from_str::<String>(text) {
                return AppleError::from_text(inner.trim());
            }
        }
        AppleError::from_text(text)
    }

    /// `HTTP <status>[ <code>][: <message>]`, for error details.
    pub(crate) fn describe(&self, status: u16) -> String {
        let mut out = format!("HTTP {status}");
        if !self.code.is_empty() {
            out.push(' ');
            out.push_str(&self.code);
        }
        if !self.message.is_empty() {
            out.push_str(": ");
            out.push_str(&self.message);
        }
        out
    }

    fn from_text(text: &str) -> AppleError {
        if is_code(text) {
            AppleError {
                code: text.to_string(),
                message: String::new(),
            }
        } else {
            AppleError {
                code: String::new(),
                message: clip(text),
            }
        }
    }
}

/// Apple's codes are upper-case words joined by `_` (a few contain digits or dots).
fn is_code(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().any(|b| b.is_ascii_uppercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// One line, at most [`MAX_MESSAGE`] characters, no control characters.
fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// What to do after an unsuccessful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Report this error.
    Final(AbmError),
    /// Try again (after `retry_after` if Apple said how long); report `error` if no attempt
    /// is left.
    Retry {
        error: AbmError,
        retry_after: Option<Duration>,
    },
}

/// Classifies an answer that is neither a success nor a session to renew.
pub(crate) fn classify(status: u16, error: AppleError, retry_after: Option<Duration>) -> Verdict {
    let detail = || error.describe(status);
    let AppleError { code, message } = error.clone();
    match (status, code.as_str()) {
        (400, "EXHAUSTED_CURSOR") => Verdict::Final(AbmError::CursorExhausted),
        (400, "EXPIRED_CURSOR") => Verdict::Final(AbmError::CursorExpired),
        (400, "INVALID_CURSOR") => Verdict::Final(AbmError::CursorInvalid),
        (403, "T_C_NOT_SIGNED") => Verdict::Final(AbmError::TermsNotSigned),
        (403, "ACCESS_DENIED") | (401, _) => {
            Verdict::Final(AbmError::AccessDenied { detail: detail() })
        }
        (429, _) => Verdict::Retry {
            error: AbmError::Throttled {
                retry_after_seconds: retry_after
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            },
            retry_after,
        },
        (500..=599, _) => Verdict::Retry {
            error: AbmError::Unavailable { status, code },
            retry_after,
        },
        (400..=499, _) => Verdict::Final(AbmError::Rejected {
            status,
            code,
            message,
        }),
        _ => Verdict::Final(AbmError::Protocol {
            message: format!("unexpected answer {}", detail()),
        }),
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay seconds or an HTTP date (IMF-fixdate), as a delay
/// from `now`. A date in the past is no delay.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(value, &format).ok()?.assume_utc();
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> AppleError {
        AppleError {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_three_body_shapes() {
        assert_eq!(AppleError::parse(b"FORBIDDEN"), err("FORBIDDEN", ""));
        assert_eq!(
            AppleError::parse(b"  T_C_NOT_SIGNED\r\n"),
            err("T_C_NOT_SIGNED", "")
        );
        assert_eq!(
            AppleError::parse(b"\"EXHAUSTED_CURSOR\""),
            err("EXHAUSTED_CURSOR", "")
        );
        assert_eq!(
            AppleError::parse(br#"{"code":"CONFIG_URL_REQUIRED","message":"url is required"}"#),
            err("CONFIG_URL_REQUIRED", "url is required")
        );
        assert_eq!(
            AppleError::parse(br#"{"code":"INVALID_CURSOR"}"#),
            err("INVALID_CURSOR", "")
        );
        // Not codes: kept as the message.
        assert_eq!(
            AppleError::parse(b"Service temporarily unavailable"),
            err("", "Service temporarily unavailable")
        );
        assert_eq!(
            AppleError::parse(b"\"something went wrong\""),
            err("", "something went wrong")
        );
        assert_eq!(AppleError::parse(b""), err("", ""));
        let html = format!("<html>\n<body>{}</body></html>", "x".repeat(500));
        let parsed = AppleError::parse(html.as_bytes());
        assert_eq!(parsed.code, "");
        assert!(parsed.message.starts_with("<html> <body>"));
        assert_eq!(parsed.message.chars().count(), MAX_MESSAGE + 1);
        // An object without a code is not trusted as one.
        let parsed = AppleError::parse(br#"{"error":"nope"}"#);
        assert_eq!(parsed.code, "");
    }

    #[test]
    fn descriptions_skip_what_is_empty() {
        assert_eq!(err("", "").describe(401), "HTTP 401");
        assert_eq!(err("FORBIDDEN", "").describe(403), "HTTP 403 FORBIDDEN");
        assert_eq!(err("", "down").describe(502), "HTTP 502: down");
        assert_eq!(err("X", "y").describe(400), "HTTP 400 X: y");
    }

    #[test]
    fn statuses_and_codes_map_to_errors() {
        let fin = |status, code, message| classify(status, err(code, message), None);
        assert_eq!(
            fin(400, "EXHAUSTED_CURSOR", ""),
            Verdict::Final(AbmError::CursorExhausted)
        );
        assert_eq!(
            fin(400, "EXPIRED_CURSOR", ""),
            Verdict::Final(AbmError::CursorExpired)
        );
        assert_eq!(
            fin(400, "INVALID_CURSOR", ""),
            Verdict::Final(AbmError::CursorInvalid)
        );
        assert_eq!(
            fin(403, "T_C_NOT_SIGNED", ""),
            Verdict::Final(AbmError::TermsNotSigned)
        );
        assert_eq!(
            fin(403, "ACCESS_DENIED", ""),
            Verdict::Final(AbmError::AccessDenied {
                detail: "HTTP 403 ACCESS_DENIED".into()
            })
        );
        assert_eq!(
            fin(400, "CONFIG_NAME_INVALID", "bad name"),
            Verdict::Final(AbmError::Rejected {
                status: 400,
                code: "CONFIG_NAME_INVALID".into(),
                message: "bad name".into()
            })
        );
        // A cursor code under another status is not a cursor verdict.
        assert!(matches!(
            fin(404, "INVALID_CURSOR", ""),
            Verdict::Final(AbmError::Rejected { status: 404, .. })
        ));
        assert_eq!(
            classify(
                429,
                err("TOO_MANY_REQUESTS", ""),
                Some(Duration::from_millis(1500))
            ),
            Verdict::Retry {
                error: AbmError::Throttled {
                    retry_after_seconds: Some(2)
                },
                retry_after: Some(Duration::from_millis(1500))
            }
        );
        assert_eq!(
            fin(503, "", "down"),
            Verdict::Retry {
                error: AbmError::Unavailable {
                    status: 503,
                    code: String::new()
                },
                retry_after: None
            }
        );
        assert!(matches!(
            fin(302, "", ""),
            Verdict::Final(AbmError::Protocol { .. })
        ));
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example date).
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(777))
        );
        let later = now + Duration::from_secs(1000);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "soon", "1.5", "Sunday, 06-Nov-94 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
