//! Who a message comes from: the identity keys shared by check-ins and command reports.

use crate::fields::Fields;
use crate::ProtoError;

/// The `UserID` a Shared iPad sends for every user it did not authenticate.
///
/// Because it is the same for all users, it cannot tell user channels apart; the
/// `UserShortName` (the Managed Apple Account) does, and is used instead (see
/// [`EnrollmentRef::user_id`]).
pub const SHARED_IPAD_UNAUTHENTICATED_USER_ID: &str = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF";

/// The identity keys Apple puts on check-in messages and command reports: `UDID`,
/// `EnrollmentID`, `EnrollmentUserID`, `UserID`, `UserShortName`, `UserLongName`, `Topic`.
///
/// Only built by parsing, which guarantees that a device identifier (`UDID` or
/// `EnrollmentID`) is present. See Apple's
/// [Check-in](https://developer.apple.com/documentation/devicemanagement/check-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    udid: Option<String>,
    enrollment_id: Option<String>,
    enrollment_user_id: Option<String>,
    user_id: Option<String>,
    user_short_name: Option<String>,
    user_long_name: Option<String>,
    topic: Option<String>,
    reference: EnrollmentRef,
}

impl Enrollment {
    pub(crate) fn from_fields(f: &Fields<'_>) -> Result<Self, ProtoError> {
        // Empty strings are treated as absent: they identify nothing.
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let udid = non_empty(f.opt_string("UDID")?);
        let enrollment_id = non_empty(f.opt_string("EnrollmentID")?);
        let enrollment_user_id = non_empty(f.opt_string("EnrollmentUserID")?);
        let user_id = non_empty(f.opt_string("UserID")?);
        let user_short_name = non_empty(f.opt_string("UserShortName")?);
        let user_long_name = non_empty(f.opt_string("UserLongName")?);
        let topic = non_empty(f.opt_string("Topic")?);

        // Device enrollments carry UDID; User Enrollments (BYOD) carry only EnrollmentID.
        let (field, device_id, user_enrollment) = match (&udid, &enrollment_id) {
            (Some(udid), _) => ("UDID", udid.clone(), false),
            (None, Some(id)) => ("EnrollmentID", id.clone(), true),
            (None, None) => return Err(ProtoError::MissingField("UDID")),
        };
        // Enrollment ids are written `device:user`; a colon inside the device part would make
        // that ambiguous, and no Apple identifier contains one.
        if device_id.contains(':') || device_id.chars().any(char::is_control) {
            return Err(ProtoError::InvalidField {
                field,
                reason: "contains a colon or a control character".to_owned(),
            });
        }

        let channel_user = match (&user_id, &user_short_name) {
            (Some(uid), Some(short)) if uid == SHARED_IPAD_UNAUTHENTICATED_USER_ID => {
                Some(short.clone())
            }
            (Some(uid), _) => Some(uid.clone()),
            (None, _) => enrollment_user_id.clone(),
        };

        let reference = EnrollmentRef {
            device_id,
            user_id: channel_user,
            user_short_name: user_short_name.clone(),
            user_long_name: user_long_name.clone(),
            user_enrollment,
        };
        Ok(Self {
            udid,
            enrollment_id,
            enrollment_user_id,
            user_id,
            user_short_name,
            user_long_name,
            topic,
            reference,
        })
    }

    /// `UDID`: the hardware identifier, present for device enrollments.
    pub fn udid(&self) -> Option<&str> {
        self.udid.as_deref()
    }

    /// `EnrollmentID`: the per-enrollment device identifier of a User Enrollment.
    pub fn enrollment_id(&self) -> Option<&str> {
        self.enrollment_id.as_deref()
    }

    /// `EnrollmentUserID`: the per-enrollment user identifier of a User Enrollment (macOS).
    pub fn enrollment_user_id(&self) -> Option<&str> {
        self.enrollment_user_id.as_deref()
    }

    /// `UserID`: the user's GUID on macOS, or [`SHARED_IPAD_UNAUTHENTICATED_USER_ID`] on
    /// Shared iPad.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// `UserShortName`: the macOS short name, or the Managed Apple Account on Shared iPad.
    pub fn user_short_name(&self) -> Option<&str> {
        self.user_short_name.as_deref()
    }

    /// `UserLongName`: the user's full name.
    pub fn user_long_name(&self) -> Option<&str> {
        self.user_long_name.as_deref()
    }

    /// `Topic`: the push topic the device subscribes to (the push certificate's UID). Apple
    /// sends it on `Authenticate`, `TokenUpdate` and `CheckOut`; it is not required here so
    /// that the service, which knows the push certificate, decides what a mismatch means.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The channel this message belongs to.
    pub fn enrollment_ref(&self) -> EnrollmentRef {
        self.reference.clone()
    }
}

/// The device or user channel a message belongs to, resolved from [`Enrollment`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnrollmentRef {
    /// `UDID`, or `EnrollmentID` for a User Enrollment.
    pub device_id: String,
    /// Set on the user channel: `UserID`, except on Shared iPad where that is the constant
    /// [`SHARED_IPAD_UNAUTHENTICATED_USER_ID`] and `UserShortName` is used; `EnrollmentUserID`
    /// for a macOS User Enrollment.
    pub user_id: Option<String>,
    /// `UserShortName`, if sent.
    pub user_short_name: Option<String>,
    /// `UserLongName`, if sent.
    pub user_long_name: Option<String>,
    /// True when the device is identified by `EnrollmentID` (a User Enrollment, BYOD): no
    /// UDID, serial number or device-wide commands.
    pub user_enrollment: bool,
}

impl EnrollmentRef {
    /// The enrollment id used as a key throughout the appliance: the device id for the
    /// device channel, `device_id:user_id` for a user channel.
    pub fn id(&self) -> String {
        match &self.user_id {
            Some(user) => format!("{}:{user}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    /// True for a user channel (macOS user, Shared iPad user).
    pub fn is_user_channel(&self) -> bool {
        self.user_id.is_some()
    }

    /// The device channel of the same device (itself, if it already is one).
    pub fn device_channel(&self) -> EnrollmentRef {
        EnrollmentRef {
            device_id: self.device_id.clone(),
            user_id: None,
            user_short_name: None,
            user_long_name: None,
            user_enrollment: self.user_enrollment,
        }
    }
}

#[cfg(test)]
mod tests {
    use plist::{Dictionary, Value};

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Enrollment, ProtoError> {
        let mut d = Dictionary::new();
        for (k, v) in pairs {
            d.insert((*k).to_owned(), Value::String((*v).to_owned()));
        }
        Enrollment::from_fields(&Fields::new(&d))
    }

    #[test]
    fn device_channel_is_the_udid() {
        let e = parse(&[("UDID", "0000-AAAA"), ("Topic", "com.apple.mgmt.X")]).unwrap();
        let r = e.enrollment_ref();
        assert_eq!(r.id(), "0000-AAAA");
        assert!(!r.is_user_channel());
        assert!(!r.user_enrollment);
        assert_eq!(e.topic(), Some("com.apple.mgmt.X"));
    }

    #[test]
    fn macos_user_channel_is_udid_colon_userid() {
        let e = parse(&[
            ("UDID", "U1"),
            ("UserID", "GUID-1"),
            ("UserShortName", "ann"),
        ])
        .unwrap();
        let r = e.enrollment_ref();
        assert_eq!(r.id(), "U1:GUID-1");
        assert_eq!(r.device_channel().id(), "U1");
    }

    #[test]
    fn shared_ipad_users_are_told_apart_by_short_name() {
        let a = parse(&[
            ("UDID", "IPAD"),
            ("UserID", SHARED_IPAD_UNAUTHENTICATED_USER_ID),
            ("UserShortName", "a@example.org"),
        ])
        .unwrap();
        let b = parse(&[
            ("UDID", "IPAD"),
            ("UserID", SHARED_IPAD_UNAUTHENTICATED_USER_ID),
            ("UserShortName", "b@example.org"),
        ])
        .unwrap();
        assert_eq!(a.enrollment_ref().id(), "IPAD:a@example.org");
        assert_ne!(a.enrollment_ref().id(), b.enrollment_ref().id());
        assert_eq!(a.user_id(), Some(SHARED_IPAD_UNAUTHENTICATED_USER_ID));
    }

    #[test]
    fn user_enrollment_uses_enrollment_ids() {
        let e = parse(&[("EnrollmentID", "E1"), ("EnrollmentUserID", "EU1")]).unwrap();
        let r = e.enrollment_ref();
        assert!(r.user_enrollment);
        assert_eq!(r.id(), "E1:EU1");
        let d = parse(&[("EnrollmentID", "E1")]).unwrap().enrollment_ref();
        assert_eq!(d.id(), "E1");
    }

    #[test]
    fn missing_or_empty_device_id_is_rejected() {
        assert!(matches!(parse(&[]), Err(ProtoError::MissingField("UDID"))));
        assert!(matches!(
            parse(&[("UDID", "")]),
            Err(ProtoError::MissingField("UDID"))
        ));
        assert!(matches!(
            parse(&[("UDID", "a:b")]),
            Err(ProtoError::InvalidField { field: "UDID", .. })
        ));
        assert!(matches!(
            parse(&[("EnrollmentID", "x\ny")]),
            Err(ProtoError::InvalidField {
                field: "EnrollmentID",
                ..
            })
        ));
    }
}
