//! ABM enrollment profiles (validated locally, defined with Apple per connection) and the rules
//! that route devices to them.

use base64::Engine as _;
use mdm_pki::Certificate;
use mdm_proto::abm::{profile_status, Device, Profile};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{abm_failure, validate_name, AbmService};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    AbmBatch, AbmClient, AbmConnector, AbmDeviceRecord, AbmProfileRecord, AbmRuleMatch,
    AbmRuleRecord, EnrollmentAuth, Store, Timestamp,
};

/// Every key Apple's profile object has; anything else in an admin's profile is a typo.
const PROFILE_FIELDS: &[&str] = &[
    "profile_name",
    "url",
    "configuration_web_url",
    "is_supervised",
    "allow_pairing",
    "is_mandatory",
    "is_mdm_removable",
    "is_multi_user",
    "await_device_configured",
    "auto_advance_setup",
    "is_return_to_service",
    "do_not_use_profile_from_backup",
    "org_magic",
    "department",
    "support_phone_number",
    "support_email_address",
    "language",
    "region",
    "anchor_certs",
    "supervising_host_certs",
    "skip_setup_items",
    "devices",
];

fn invalid(field: &str, why: impl std::fmt::Display) -> ServiceError {
    ServiceError::bad_request("ABM_PROFILE_INVALID", format!("{field}: {why}"))
}

/// Parses an admin's profile JSON strictly: unknown keys and wrong types name the field.
pub fn parse_profile(json: &serde_json::Value) -> ServiceResult<Profile> {
    let obj = json
        .as_object()
        .ok_or_else(|| invalid("profile", "must be a JSON object"))?;
    for key in obj.keys() {
        if !PROFILE_FIELDS.contains(&key.as_str()) {
            return Err(invalid(key, "is not a field of an ABM enrollment profile"));
        }
    }
    serde_json::from_value(json.clone()).map_err(|e| invalid("profile", e))
}

/// Takes the appliance's own `authentication` option (`none` or `local`) out of an admin's
/// profile JSON; the rest is Apple's profile.
pub fn split_authentication(
    json: &serde_json::Value,
) -> ServiceResult<(serde_json::Value, EnrollmentAuth)> {
    let mut json = json.clone();
    let auth = match json
        .as_object_mut()
        .and_then(|o| o.remove("authentication"))
    {
        None => EnrollmentAuth::None,
        Some(v) => serde_json::from_value(v).map_err(|_| {
            invalid(
                "authentication",
                "must be \"none\" (enroll without a user) or \"local\" (a local account signs in)",
            )
        })?,
    };
    Ok((json, auth))
}

/// User authentication happens on this appliance's `configuration_web_url` page, so a profile
/// asking for it must send devices there.
pub fn check_authentication(
    auth: EnrollmentAuth,
    p: &Profile,
    base_url: &str,
) -> ServiceResult<()> {
    if auth == EnrollmentAuth::None {
        return Ok(());
    }
    let page = format!("{base_url}/mdm/enroll");
    if p.configuration_web_url.as_deref() != Some(page.as_str()) {
        return Err(invalid(
            "configuration_web_url",
            format!("must be {page} (or left out) when authentication is {:?}: users sign in on the appliance's page", auth.as_str()),
        ));
    }
    Ok(())
}

/// Fills in the appliance's defaults: the enrollment URL of this appliance, its CA as the
/// anchor devices trust during Setup Assistant, and holding devices in Setup Assistant until
/// they are configured.
pub fn with_defaults(mut p: Profile, base_url: &str, ca: &Certificate) -> Profile {
    let enroll = format!("{base_url}/mdm/enroll");
    if p.url.is_none() {
        p.url = Some(enroll.clone());
    }
    if p.configuration_web_url.is_none() {
        p.configuration_web_url = Some(enroll);
    }
    if p.anchor_certs.is_empty() {
        p.anchor_certs = vec![base64::engine::general_purpose::STANDARD.encode(ca.der())];
    }
    if p.await_device_configured.is_none() {
        p.await_device_configured = Some(true);
    }
    p
}

/// Checks a profile the way Apple would, so an admin sees the field at fault before anything
/// is sent.
pub fn validate_profile(p: &Profile) -> ServiceResult<()> {
    let name = p.profile_name.trim();
    if name.is_empty() {
        return Err(invalid("profile_name", "is required"));
    }
    if p.profile_name.chars().count() > 255 {
        return Err(invalid("profile_name", "must be at most 255 characters"));
    }
    for (field, url) in [
        ("url", &p.url),
        ("configuration_web_url", &p.configuration_web_url),
    ] {
        if let Some(u) = url {
            let ok = u
                .strip_prefix("https://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if !ok {
                return Err(invalid(
                    field,
                    format!("must be an https:// URL (got {u:?})"),
                ));
            }
        }
    }
    if p.url.is_none() && p.configuration_web_url.is_none() {
        return Err(invalid("url", "is required"));
    }
    if p.is_mdm_removable == Some(false) && p.is_supervised != Some(true) {
        return Err(invalid(
            "is_mdm_removable",
            "can be false only when is_supervised is true",
        ));
    }
    if p.is_multi_user == Some(true) && p.is_supervised != Some(true) {
        return Err(invalid(
            "is_multi_user",
            "Shared iPad needs is_supervised true",
        ));
    }
    let limits: [(&str, &Option<String>, usize); 4] = [
        ("department", &p.department, 125),
        ("org_magic", &p.org_magic, 256),
        ("support_phone_number", &p.support_phone_number, 50),
        ("support_email_address", &p.support_email_address, 250),
    ];
    for (field, value, max) in limits {
        if let Some(v) = value {
            if v.chars().count() > max {
                return Err(invalid(field, format!("must be at most {max} characters")));
            }
        }
    }
    if let Some(phone) = &p.support_phone_number {
        let ok = phone
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().x".contains(c))
            && phone.chars().any(|c| c.is_ascii_digit());
        if !ok {
            return Err(invalid(
                "support_phone_number",
                format!("is not a phone number (got {phone:?})"),
            ));
        }
    }
    if let Some(email) = &p.support_email_address {
        let ok = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
        });
        if !ok {
            return Err(invalid(
                "support_email_address",
                format!("is not an e-mail address (got {email:?})"),
            ));
        }
    }
    if let Some(lang) = &p.language {
        let ok = (2..=3).contains(&lang.len()) && lang.chars().all(|c| c.is_ascii_lowercase());
        if !ok {
            return Err(invalid(
                "language",
                format!("must be an ISO 639 code such as \"en\" (got {lang:?})"),
            ));
        }
    }
    if let Some(region) = &p.region {
        let ok = region.len() == 2 && region.chars().all(|c| c.is_ascii_uppercase());
        if !ok {
            return Err(invalid(
                "region",
                format!("must be an ISO 3166 code such as \"US\" (got {region:?})"),
            ));
        }
    }
    for (field, certs) in [
        ("anchor_certs", &p.anchor_certs),
        ("supervising_host_certs", &p.supervising_host_certs),
    ] {
        for (i, b64) in certs.iter().enumerate() {
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| invalid(&format!("{field}[{i}]"), "is not base64"))?;
            Certificate::from_der(&der).map_err(|e| {
                invalid(
                    &format!("{field}[{i}]"),
                    format!("is not a DER certificate: {e}"),
                )
            })?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, item) in p.skip_setup_items.iter().enumerate() {
        if item.is_empty() || !item.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(
                &format!("skip_setup_items[{i}]"),
                format!("must be a setup pane key such as \"Location\" (got {item:?})"),
            ));
        }
        if !seen.insert(item) {
            return Err(invalid(
                &format!("skip_setup_items[{i}]"),
                format!("{item:?} is listed twice"),
            ));
        }
    }
    if !p.devices.is_empty() {
        return Err(invalid(
            "devices",
            "assign devices with rules or `mdmctl abm profile assign`, not inside the profile",
        ));
    }
    Ok(())
}

/// A rule as an admin writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    pub profile: String,
    #[serde(default)]
    pub serials: Vec<String>,
    #[serde(default)]
    pub device_family: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
}

/// Decides which profile each device of a connection should have.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Serial → profile name, from rules' serial lists (first rule in priority order wins).
    explicit: std::collections::HashMap<String, String>,
    /// Attribute rules in priority order.
    rules: Vec<AbmRuleRecord>,
    default_profile: Option<String>,
}

impl Router {
    pub fn new(rules: Vec<AbmRuleRecord>, default_profile: Option<String>) -> Self {
        let mut explicit = std::collections::HashMap::new();
        let mut attribute = Vec::new();
        for rule in rules {
            for s in &rule.matcher.serials {
                explicit
                    .entry(s.to_ascii_uppercase())
                    .or_insert_with(|| rule.profile.clone());
            }
            let m = &rule.matcher;
            if m.device_family.is_some() || m.model.is_some() || m.os.is_some() {
                attribute.push(rule);
            }
        }
        Router {
            explicit,
            rules: attribute,
            default_profile,
        }
    }

    /// The profile name this device should have, if any.
    pub fn profile_for(&self, d: &Device) -> Option<&str> {
        if let Some(p) = self.explicit.get(&d.serial_number.to_ascii_uppercase()) {
            return Some(p);
        }
        let eq = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        for rule in &self.rules {
            let m: &AbmRuleMatch = &rule.matcher;
            let model_ok = m.model.as_ref().is_none_or(|w| {
                d.model
                    .to_ascii_lowercase()
                    .contains(&w.to_ascii_lowercase())
            });
            if eq(&m.device_family, &d.device_family) && eq(&m.os, &d.os) && model_ok {
                return Some(&rule.profile);
            }
        }
        self.default_profile.as_deref()
    }
}

/// Whether a device needs an assignment call to get `profile_uuid`.
pub fn needs_assignment(rec: &AbmDeviceRecord, profile_uuid: &str) -> bool {
    if rec.removed_at.is_some() {
        return false;
    }
    if rec
        .assignment
        .as_ref()
        .is_some_and(|a| a.outcome == crate::ports::AbmAssignOutcome::Removed)
    {
        // An admin took the profile off this device: leave it until they assign again.
        return false;
    }
    let d = &rec.device;
    let has_it = d.profile_uuid == profile_uuid
        && matches!(
            d.profile_status.as_str(),
            profile_status::ASSIGNED | profile_status::PUSHED
        );
    !has_it
}

impl<S: Store, C: AbmConnector> AbmService<S, C> {
    /// Creates or replaces a profile: validated, defined with Apple (which answers a new uuid
    /// for every definition), stored, and every device it covers queued for re-assignment.
    pub async fn put_profile(
        &self,
        connection: &str,
        name: &str,
        json: &serde_json::Value,
    ) -> ServiceResult<AbmProfileRecord> {
        validate_name("profile name", name)?;
        let (json, authentication) = split_authentication(json)?;
        let profile = with_defaults(
            parse_profile(&json)?,
            &self.mdm().config().base_url,
            self.mdm().authority().ca_cert(),
        );
        validate_profile(&profile)?;
        check_authentication(authentication, &profile, &self.mdm().config().base_url)?;
        let busy = self.lock(connection).await;
        let mut conn = self.connection_record(connection)?;
        let client = self.client(&conn)?;
        let now = Timestamp::now();
        let defined = match client.define_profile(profile.clone()).await {
            Ok(d) => d,
            Err(e) => {
                super::connections::note_problem_if_token(&mut conn, &e, now);
                self.write_connection(conn).await?;
                return Err(abm_failure(connection, &e));
            }
        };
        if defined.profile_uuid.is_empty() {
            return Err(ServiceError::new(
                crate::error::ErrorKind::Unavailable,
                "ABM_PROTOCOL",
                "Apple accepted the profile but answered no profile_uuid; try again",
            ));
        }
        let rec = AbmProfileRecord {
            name: name.to_string(),
            connection: connection.to_string(),
            profile,
            apple_uuid: Some(defined.profile_uuid.clone()),
            defined_at: Some(now),
            updated_at: now,
            authentication,
        };
        conn.problem = None;
        conn.last_ok_at = Some(now);
        self.commit(AbmBatch {
            connection: Some(conn),
            profiles: vec![rec.clone()],
            ..AbmBatch::default()
        })
        .await?;
        info!(connection, profile = name, profile_uuid = %defined.profile_uuid, "ABM profile defined");
        drop(busy);
        self.mark_all_due(connection).await?;
        self.wake_scheduler();
        Ok(rec)
    }

    /// Deletes a profile that no rule and no default uses. Devices keep what Apple has.
    pub async fn delete_profile(&self, connection: &str, name: &str) -> ServiceResult<()> {
        let _busy = self.lock(connection).await;
        let conn = self.connection_record(connection)?;
        self.store()
            .abm_profile(connection, name)?
            .ok_or_else(|| profile_not_found(connection, name))?;
        if conn.default_profile.as_deref() == Some(name) {
            return Err(ServiceError::conflict(
                "ABM_PROFILE_IN_USE",
                format!("profile {name:?} is the default of connection {connection:?}; choose another default first"),
            ));
        }
        if let Some(rule) = self
            .store()
            .abm_rules(connection)?
            .into_iter()
            .find(|r| r.profile == name)
        {
            return Err(ServiceError::conflict(
                "ABM_PROFILE_IN_USE",
                format!(
                    "profile {name:?} is used by rule {:?}; delete or change the rule first",
                    rule.name
                ),
            ));
        }
        self.commit(AbmBatch {
            delete_profiles: vec![(connection.to_string(), name.to_string())],
            ..AbmBatch::default()
        })
        .await?;
        Ok(())
    }

    pub fn profiles(&self, connection: &str) -> ServiceResult<Vec<AbmProfileRecord>> {
        self.connection_record(connection)?;
        Ok(self.store().abm_profiles(connection)?)
    }

    pub fn profile(&self, connection: &str, name: &str) -> ServiceResult<AbmProfileRecord> {
        self.store()
            .abm_profile(connection, name)?
            .ok_or_else(|| profile_not_found(connection, name))
    }

    /// Creates or replaces a rule, then queues every device for a fresh look.
    pub async fn put_rule(&self, connection: &str, spec: RuleSpec) -> ServiceResult<AbmRuleRecord> {
        validate_name("rule name", &spec.name)?;
        let mut serials = Vec::with_capacity(spec.serials.len());
        for (i, s) in spec.serials.iter().enumerate() {
            let s = s.trim().to_ascii_uppercase();
            if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ServiceError::bad_request(
                    "ABM_RULE_INVALID",
                    format!("serials[{i}]: {:?} is not a serial number", spec.serials[i]),
                ));
            }
            serials.push(s);
        }
        let empty = |o: &Option<String>| o.as_ref().is_none_or(|v| v.trim().is_empty());
        if serials.is_empty() && empty(&spec.device_family) && empty(&spec.model) && empty(&spec.os)
        {
            return Err(ServiceError::bad_request(
                "ABM_RULE_INVALID",
                "a rule needs serials, device_family, model or os: use the connection's default_profile for everything else",
            ));
        }
        {
            let _busy = self.lock(connection).await;
            self.connection_record(connection)?;
            if self
                .store()
                .abm_profile(connection, &spec.profile)?
                .is_none()
            {
                return Err(ServiceError::bad_request(
                    "ABM_PROFILE_NOT_FOUND",
                    format!(
                        "profile: connection {connection:?} has no profile {:?}",
                        spec.profile
                    ),
                ));
            }
            let clean =
                |o: Option<String>| o.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
            let created_at = self
                .store()
                .abm_rules(connection)?
                .into_iter()
                .find(|r| r.name == spec.name)
                .map_or_else(Timestamp::now, |r| r.created_at);
            let rule = AbmRuleRecord {
                connection: connection.to_string(),
                name: spec.name,
                priority: spec.priority,
                matcher: AbmRuleMatch {
                    serials,
                    device_family: clean(spec.device_family),
                    model: clean(spec.model),
                    os: clean(spec.os),
                },
                profile: spec.profile,
                created_at,
            };
            self.commit(AbmBatch {
                rules: vec![rule.clone()],
                ..AbmBatch::default()
            })
            .await?;
            drop(_busy);
            self.mark_all_due(connection).await?;
            self.wake_scheduler();
            Ok(rule)
        }
    }

    pub async fn delete_rule(&self, connection: &str, name: &str) -> ServiceResult<()> {
        let busy = self.lock(connection).await;
        if !self
            .store()
            .abm_rules(connection)?
            .iter()
            .any(|r| r.name == name)
        {
            return Err(ServiceError::not_found(
                "ABM_RULE_NOT_FOUND",
                format!("connection {connection:?} has no rule {name:?}"),
            ));
        }
        self.commit(AbmBatch {
            delete_rules: vec![(connection.to_string(), name.to_string())],
            ..AbmBatch::default()
        })
        .await?;
        drop(busy);
        self.mark_all_due(connection).await?;
        self.wake_scheduler();
        Ok(())
    }

    pub fn rules(&self, connection: &str) -> ServiceResult<Vec<AbmRuleRecord>> {
        self.connection_record(connection)?;
        Ok(self.store().abm_rules(connection)?)
    }

    /// The router for a connection as stored now.
    pub(crate) fn router(&self, connection: &str) -> ServiceResult<Router> {
        let conn = self.connection_record(connection)?;
        Ok(Router::new(
            self.store().abm_rules(connection)?,
            conn.default_profile,
        ))
    }

    /// Queues every device of a connection whose effective profile it does not have yet (after
    /// a change of profiles, rules or the default). Devices in a cool-down keep their time.
    pub(crate) async fn mark_all_due(&self, connection: &str) -> ServiceResult<()> {
        let _busy = self.lock(connection).await;
        let planner = self.planner(connection)?;
        let now = Timestamp::now();
        for page in self.device_pages(connection, 1000) {
            let mut changed = Vec::new();
            for mut rec in page? {
                let next = planner.next_assign_at(&rec, now);
                if next != rec.next_assign_at {
                    rec.next_assign_at = next;
                    changed.push(rec);
                }
            }
            self.write_devices(changed).await?;
        }
        Ok(())
    }
}

fn profile_not_found(connection: &str, name: &str) -> ServiceError {
    ServiceError::not_found(
        "ABM_PROFILE_NOT_FOUND",
        format!("connection {connection:?} has no profile {name:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Profile {
        Profile {
            profile_name: "Staff iPads".into(),
            url: Some("https://mdm.lan/mdm/enroll".into()),
            ..Profile::default()
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse_profile(&json!({"profile_name": "x", "is_superviced": true}))
            .err()
            .map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("is_superviced: is not a field of an ABM enrollment profile")
        );
        let e = parse_profile(&json!({"profile_name": "x", "is_supervised": "yes"}));
        assert!(e.is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let field_of = |p: Profile| {
            validate_profile(&p)
                .err()
                .map(|e| e.message.split(':').next().unwrap_or("").to_string())
        };
        assert_eq!(field_of(valid()), None);
        assert_eq!(
            field_of(Profile {
                profile_name: " ".into(),
                ..valid()
            })
            .as_deref(),
            Some("profile_name")
        );
        assert_eq!(
            field_of(Profile {
                url: Some("http://x".into()),
                ..valid()
            })
            .as_deref(),
            Some("url")
        );
        assert_eq!(
            field_of(Profile {
                is_mdm_removable: Some(false),
                ..valid()
            })
            .as_deref(),
            Some("is_mdm_removable")
        );
        assert_eq!(
            field_of(Profile {
                is_mdm_removable: Some(false),
                is_supervised: Some(true),
                ..valid()
            }),
            None
        );
        assert_eq!(
            field_of(Profile {
                support_email_address: Some("help@".into()),
                ..valid()
            })
            .as_deref(),
            Some("support_email_address")
        );
        assert_eq!(
            field_of(Profile {
                support_phone_number: Some("call us".into()),
                ..valid()
            })
            .as_deref(),
            Some("support_phone_number")
        );
        assert_eq!(
            field_of(Profile {
                language: Some("English".into()),
                ..valid()
            })
            .as_deref(),
            Some("language")
        );
        assert_eq!(
            field_of(Profile {
                region: Some("us".into()),
                ..valid()
            })
            .as_deref(),
            Some("region")
        );
        assert_eq!(
            field_of(Profile {
                anchor_certs: vec!["AAAA".into()],
                ..valid()
            })
            .as_deref(),
            Some("anchor_certs[0]")
        );
        assert_eq!(
            field_of(Profile {
                skip_setup_items: vec!["Location".into(), "Location".into()],
                ..valid()
            })
            .as_deref(),
            Some("skip_setup_items[1]")
        );
        assert_eq!(
            field_of(Profile {
                devices: vec!["C02X".into()],
                ..valid()
            })
            .as_deref(),
            Some("devices")
        );
    }

    fn device(serial: &str, family: &str, model: &str, os: &str) -> Device {
        Device {
            serial_number: serial.into(),
            device_family: family.into(),
            model: model.into(),
            os: os.into(),
            ..Device::default()
        }
    }

    fn rule(name: &str, priority: i32, m: AbmRuleMatch, profile: &str) -> AbmRuleRecord {
        AbmRuleRecord {
            connection: "c".into(),
            name: name.into(),
            priority,
            matcher: m,
            profile: profile.into(),
            created_at: Timestamp(0),
        }
    }

    #[test]
    fn routing_order() {
        let r = Router::new(
            vec![
                rule(
                    "ipads",
                    1,
                    AbmRuleMatch {
                        device_family: Some("ipad".into()),
                        ..AbmRuleMatch::default()
                    },
                    "ipad-profile",
                ),
                rule(
                    "air",
                    0,
                    AbmRuleMatch {
                        model: Some("iPad Air".into()),
                        ..AbmRuleMatch::default()
                    },
                    "air-profile",
                ),
                rule(
                    "vip",
                    5,
                    AbmRuleMatch {
                        serials: vec!["VIP1".into()],
                        ..AbmRuleMatch::default()
                    },
                    "vip-profile",
                ),
            ],
            Some("default".into()),
        );
        let mut rules_sorted = r.clone();
        rules_sorted.rules.sort_by_key(|r| r.priority);
        // The store returns rules by priority; emulate that.
        let r = Router {
            rules: rules_sorted.rules,
            ..r
        };
        assert_eq!(
            r.profile_for(&device("VIP1", "iPad", "iPad Air", "iOS")),
            Some("vip-profile")
        );
        assert_eq!(
            r.profile_for(&device("A1", "iPad", "iPad Air (5th generation)", "iOS")),
            Some("air-profile")
        );
        assert_eq!(
            r.profile_for(&device("A2", "iPad", "iPad Pro", "iOS")),
            Some("ipad-profile")
        );
        assert_eq!(
            r.profile_for(&device("A3", "Mac", "MacBook Air", "OSX")),
            Some("default")
        );
    }

    #[test]
    fn assignment_needed() {
        let mut rec = AbmDeviceRecord {
            connection: "c".into(),
            serial: "S".into(),
            device: device("S", "iPhone", "iPhone 15", "iOS"),
            first_seen_at: Timestamp(0),
            updated_at: Timestamp(0),
            removed_at: None,
            seen_generation: 1,
            assignment: None,
            next_assign_at: None,
        };
        assert!(needs_assignment(&rec, "U1"));
        rec.device.profile_uuid = "U1".into();
        rec.device.profile_status = "assigned".into();
        assert!(!needs_assignment(&rec, "U1"));
        assert!(needs_assignment(&rec, "U2"));
        rec.device.profile_status = "removed".into();
        assert!(needs_assignment(&rec, "U1"));
        rec.removed_at = Some(Timestamp(1));
        assert!(!needs_assignment(&rec, "U1"));
    }
}
