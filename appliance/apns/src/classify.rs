//! What an APNs answer means for the push, the token and the service.
//!
//! Apple's "Handling notification responses from APNs" lists the status codes and `reason`
//! strings; the grouping below follows what each one asks of a provider.

use serde::Deserialize;

/// The meaning of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 200.
    Sent { apns_id: Option<String> },
    /// The token is dead for this topic: stop pushing it.
    InvalidToken { status: u16, reason: String },
    /// The certificate or topic is refused: nothing gets through until an admin acts.
    CertificateRejected { status: u16, reason: String },
    /// Worth retrying. `service_failure` is false for answers about one device (429), which
    /// say nothing about the service's health.
    ///
    /// `connection_closing`: APNs said the server behind this connection is shutting down
    /// (503 `Shutdown`), so the retry belongs on a new connection.
    Transient {
        reason: String,
        service_failure: bool,
        connection_closing: bool,
    },
    /// An answer that retrying cannot change: this client built a bad request.
    Bug { status: u16, reason: String },
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: Option<String>,
}

/// Classifies an answer from its status, `apns-id` header and body.
pub(crate) fn classify(status: u16, apns_id: Option<String>, body: &[u8]) -> Verdict {
    if status == 200 {
        return Verdict::Sent { apns_id };
    }
    let reason = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.reason)
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no reason given")
                .to_string()
        });
    match (status, reason.as_str()) {
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => {
            Verdict::InvalidToken { status, reason }
        }
        (400, "BadTopic" | "TopicDisallowed") | (403, _) => {
            Verdict::CertificateRejected { status, reason }
        }
        (429, _) => Verdict::Transient {
            reason: format!("{status} {reason}"),
            service_failure: false,
            connection_closing: false,
        },
        (500..=599, _) => Verdict::Transient {
            connection_closing: status == 503 && reason == "Shutdown",
            reason: format!("{status} {reason}"),
            service_failure: true,
        },
        _ => Verdict::Bug { status, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reason: &str) -> Vec<u8> {
        format!(r#"{{"reason":"{reason}","timestamp":1700000000000}}"#).into_bytes()
    }

    #[test]
    fn success_keeps_the_apns_id() {
        assert_eq!(
            classify(200, Some("abc".into()), b""),
            Verdict::Sent {
                apns_id: Some("abc".into())
            }
        );
    }

    #[test]
    fn dead_tokens() {
        for (status, reason) in [
            (400, "BadDeviceToken"),
            (400, "DeviceTokenNotForTopic"),
            (410, "Unregistered"),
            (410, "ExpiredToken"),
        ] {
            assert_eq!(
                classify(status, None, &body(reason)),
                Verdict::InvalidToken {
                    status,
                    reason: reason.into()
                }
            );
        }
    }

    #[test]
    fn certificate_and_topic_refusals() {
        for (status, reason) in [
            (403, "BadCertificate"),
            (403, "BadCertificateEnvironment"),
            (403, "Forbidden"),
            (403, "ExpiredProviderToken"),
            (400, "BadTopic"),
            (400, "TopicDisallowed"),
        ] {
            assert_eq!(
                classify(status, None, &body(reason)),
                Verdict::CertificateRejected {
                    status,
                    reason: reason.into()
                }
            );
        }
    }

    #[test]
    fn transient_answers() {
        assert_eq!(
            classify(429, None, &body("TooManyRequests")),
            Verdict::Transient {
                reason: "429 TooManyRequests".into(),
                service_failure: false,
                connection_closing: false,
            }
        );
        assert_eq!(
            classify(503, None, &body("Shutdown")),
            Verdict::Transient {
                reason: "503 Shutdown".into(),
                service_failure: true,
                connection_closing: true,
            }
        );
        // No JSON body: the status text stands in.
        assert_eq!(
            classify(502, None, b"<html>bad gateway</html>"),
            Verdict::Transient {
                reason: "502 Bad Gateway".into(),
                service_failure: true,
                connection_closing: false,
            }
        );
    }

    #[test]
    fn client_bugs_are_not_retried() {
        for (status, reason) in [
            (400, "PayloadEmpty"),
            (400, "BadMessageId"),
            (400, "MissingTopic"),
            (404, "BadPath"),
            (405, "MethodNotAllowed"),
            (413, "PayloadTooLarge"),
        ] {
            assert_eq!(
                classify(status, None, &body(reason)),
                Verdict::Bug {
                    status,
                    reason: reason.into()
                }
            );
        }
        assert_eq!(
            classify(302, None, b""),
            Verdict::Bug {
                status: 302,
                reason: "Found".into()
            }
        );
    }
}
