//! Rule-based group membership: which device facts a rule can test and how.

use std::cmp::Ordering;

use crate::error::{ServiceError, ServiceResult};
use crate::lifecycle::csv::{Ownership, Platform};
use crate::lifecycle::status::DeviceFacts;
use crate::ports::{GroupRule, MatchMode, RuleCondition, RuleField, RuleOp};

/// Most conditions one rule may hold: rules are for people to read.
pub const MAX_CONDITIONS: usize = 20;

/// Checks a rule an admin sent; errors name the condition.
pub fn validate(rule: &GroupRule) -> ServiceResult<()> {
    let invalid = |field: String, msg: String| {
        ServiceError::bad_request("GROUP_RULE_INVALID", format!("{field}: {msg}"))
    };
    if rule.conditions.is_empty() {
        return Err(invalid(
            "rule.conditions".into(),
            "a rule needs at least one condition".into(),
        ));
    }
    if rule.conditions.len() > MAX_CONDITIONS {
        return Err(invalid(
            "rule.conditions".into(),
            format!("a rule holds at most {MAX_CONDITIONS} conditions"),
        ));
    }
    for (i, c) in rule.conditions.iter().enumerate() {
        let at = format!("rule.conditions[{i}]");
        if c.value.trim().is_empty() {
            return Err(invalid(format!("{at}.value"), "the value is empty".into()));
        }
        let versioned = matches!(c.op, RuleOp::VersionAtLeast | RuleOp::VersionBelow);
        if versioned && c.field != RuleField::OsVersion {
            return Err(invalid(
                format!("{at}.op"),
                "version_at_least and version_below compare OS versions: use them with field os_version".into(),
            ));
        }
        if versioned && parse_version(&c.value).is_none() {
            return Err(invalid(
                format!("{at}.value"),
                format!("`{}` is not a version such as 17 or 17.4.1", c.value),
            ));
        }
        let is_or_not = matches!(c.op, RuleOp::Is | RuleOp::IsNot);
        match c.field {
            RuleField::Platform if is_or_not && Platform::parse(&c.value).is_none() => {
                return Err(invalid(
                    format!("{at}.value"),
                    format!(
                        "`{}` is not a platform: use ios, ipados, macos, tvos or visionos",
                        c.value
                    ),
                ));
            }
            RuleField::Ownership if is_or_not && Ownership::parse(&c.value).is_none() => {
                return Err(invalid(
                    format!("{at}.value"),
                    format!(
                        "`{}` is not an ownership: use personal, corporate or selectuser",
                        c.value
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a device's facts satisfy the rule.
pub fn matches(rule: &GroupRule, f: &DeviceFacts) -> bool {
    let mut results = rule.conditions.iter().map(|c| holds(c, f));
    match rule.mode {
        MatchMode::All => results.all(|r| r),
        MatchMode::Any => results.any(|r| r),
    }
}

fn holds(c: &RuleCondition, f: &DeviceFacts) -> bool {
    let values = fact(c.field, f);
    // Platforms and ownerships are compared by meaning: `ipad` is `iPadOS`.
    let canonical = match (c.field, c.op) {
        (RuleField::Platform, RuleOp::Is | RuleOp::IsNot) => {
            Platform::parse(&c.value).map(|p| p.as_str())
        }
        (RuleField::Ownership, RuleOp::Is | RuleOp::IsNot) => {
            Ownership::parse(&c.value).map(|o| o.as_str())
        }
        _ => None,
    };
    let want = canonical.unwrap_or(c.value.trim());
    let test = |v: &str| -> bool {
        match c.op {
            RuleOp::Is | RuleOp::IsNot => v.eq_ignore_ascii_case(want),
            RuleOp::StartsWith => v
                .get(..want.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(want)),
            RuleOp::Contains => v.to_ascii_lowercase().contains(&want.to_ascii_lowercase()),
            RuleOp::VersionAtLeast => {
                compare_versions(v, want).is_some_and(|o| o != Ordering::Less)
            }
            RuleOp::VersionBelow => compare_versions(v, want) == Some(Ordering::Less),
        }
    };
    match c.op {
        // `is_not` holds for a device without the fact: it is not that value.
        RuleOp::IsNot => !values.iter().any(|v| test(v)),
        _ => values.iter().any(|v| test(v)),
    }
}

/// The values of a fact (several for a device listed by several ABM connections).
fn fact(field: RuleField, f: &DeviceFacts) -> Vec<String> {
    let e = f.enrollment.as_ref();
    let abm = f.current_abm();
    let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
    match field {
        RuleField::Serial => vec![f.serial.clone()],
        RuleField::Model => one(e
            .and_then(|e| e.model.clone())
            .or_else(|| abm.map(|a| a.model.clone()).filter(|m| !m.is_empty()))),
        RuleField::OsVersion => one(e.and_then(|e| e.os_version.clone())),
        RuleField::Ownership => one(f
            .preenroll
            .as_ref()
            .and_then(|p| p.ownership)
            .map(|o| o.as_str().to_string())),
        RuleField::Platform => one(f
            .preenroll
            .as_ref()
            .and_then(|p| p.platform)
            .or_else(|| abm.and_then(|a| platform_of_family(&a.device_family)))
            .map(|p| p.as_str().to_string())),
        RuleField::AbmConnection => f
            .abm
            .iter()
            .filter(|a| a.removed_at.is_none())
            .map(|a| a.connection.clone())
            .collect(),
    }
}

/// ABM's `device_family` (`iPhone`, `iPad`, `Mac`, `AppleTV`, `Vision`) as a platform.
fn platform_of_family(family: &str) -> Option<Platform> {
    let f = family.to_ascii_lowercase();
    if f.starts_with("iphone") || f.starts_with("ipod") {
        Platform::parse("ios")
    } else if f.starts_with("ipad") {
        Platform::parse("ipados")
    } else if f.starts_with("mac") {
        Platform::parse("macos")
    } else if f.starts_with("appletv") || f.starts_with("apple tv") {
        Platform::parse("tvos")
    } else if f.starts_with("vision") {
        Platform::parse("visionos")
    } else {
        None
    }
}

/// `17.4.1` as numbers; `None` for anything else.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    v.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Compares dotted versions, missing parts counting as 0 (`17` = `17.0.0`).
fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_version(a)?, parse_version(b)?);
    let n = a.len().max(b.len());
    let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..n)
            .map(|i| get(&a, i).cmp(&get(&b, i)))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::lifecycle::status::{AbmFacts, EnrollmentFacts};
    use crate::ports::{EnrollmentState, PreenrollRecord, PreenrollSource, Timestamp};

    fn cond(field: RuleField, op: RuleOp, value: &str) -> RuleCondition {
        RuleCondition {
            field,
            op,
            value: value.into(),
        }
    }

    fn rule(mode: MatchMode, conditions: Vec<RuleCondition>) -> GroupRule {
        GroupRule { mode, conditions }
    }

    fn device() -> DeviceFacts {
        DeviceFacts {
            serial: "C02ABC".into(),
            preenroll: Some(Box::new(PreenrollRecord {
                serial: "C02ABC".into(),
                name: None,
                email: None,
                ownership: Some(Ownership::Corporate),
                platform: None,
                mobile: None,
                device_name: None,
                source: PreenrollSource::Csv,
                created_at: Timestamp(0),
                updated_at: Timestamp(0),
                updated_by: "t".into(),
            })),
            abm: vec![AbmFacts {
                connection: "main".into(),
                model: "iPad Air".into(),
                device_family: "iPad".into(),
                os: "iOS".into(),
                profile_status: "pushed".into(),
                profile_uuid: String::new(),
                pushed_at: None,
                assignment: None,
                next_assign_at: None,
                removed_at: None,
                first_seen_at: Timestamp(0),
                updated_at: Timestamp(0),
            }],
            enrollment: Some(Box::new(EnrollmentFacts {
                id: "E".into(),
                state: EnrollmentState::Enrolled,
                ade: true,
                awaiting_configuration: false,
                model: Some("iPad13,18".into()),
                os_version: Some("17.10".into()),
                device_name: None,
                authenticated_at: Timestamp(0),
                enrolled_at: None,
                token_updated_at: None,
                checked_out_at: None,
                last_seen_at: Timestamp(0),
                last_push_at: None,
                push_invalid: None,
            })),
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("17.10", "17.9"), Some(Ordering::Greater));
        assert_eq!(compare_versions("17", "17.0.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("16.7.2", "17"), Some(Ordering::Less));
        assert_eq!(compare_versions("17.x", "17"), None);
    }

    #[test]
    fn each_field_and_operator() {
        let d = device();
        let yes = |c: RuleCondition| matches(&rule(MatchMode::All, vec![c]), &d);
        assert!(yes(cond(RuleField::Model, RuleOp::StartsWith, "ipad13")));
        assert!(!yes(cond(RuleField::Model, RuleOp::Is, "iPad Air")));
        assert!(yes(cond(
            RuleField::OsVersion,
            RuleOp::VersionAtLeast,
            "17.9"
        )));
        assert!(!yes(cond(
            RuleField::OsVersion,
            RuleOp::VersionBelow,
            "17.10"
        )));
        assert!(yes(cond(RuleField::Platform, RuleOp::Is, "ipados")));
        assert!(yes(cond(RuleField::Platform, RuleOp::Is, "iPad")));
        assert!(yes(cond(RuleField::Ownership, RuleOp::IsNot, "byod")));
        assert!(yes(cond(RuleField::Ownership, RuleOp::Is, "CORPORATE")));
        assert!(yes(cond(RuleField::AbmConnection, RuleOp::Is, "main")));
        assert!(!yes(cond(RuleField::AbmConnection, RuleOp::IsNot, "main")));
        assert!(yes(cond(RuleField::Serial, RuleOp::Contains, "2ab")));
    }

    #[test]
    fn missing_facts_fail_all_but_is_not() {
        let d = DeviceFacts {
            serial: "X".into(),
            ..DeviceFacts::default()
        };
        let yes = |c: RuleCondition| matches(&rule(MatchMode::All, vec![c]), &d);
        assert!(!yes(cond(RuleField::OsVersion, RuleOp::VersionBelow, "99")));
        assert!(!yes(cond(RuleField::Ownership, RuleOp::Is, "personal")));
        assert!(yes(cond(RuleField::Ownership, RuleOp::IsNot, "personal")));
        // Without an enrollment, the model comes from ABM.
        let mut abm_only = device();
        abm_only.enrollment = None;
        assert!(matches(
            &rule(
                MatchMode::All,
                vec![cond(RuleField::Model, RuleOp::Is, "ipad air")]
            ),
            &abm_only
        ));
    }

    #[test]
    fn all_and_any() {
        let d = device();
        let conds = vec![
            cond(RuleField::Platform, RuleOp::Is, "ios"),
            cond(RuleField::Ownership, RuleOp::Is, "corporate"),
        ];
        assert!(!matches(&rule(MatchMode::All, conds.clone()), &d));
        assert!(matches(&rule(MatchMode::Any, conds), &d));
    }

    #[test]
    fn validation_names_the_condition() {
        let bad = |c: RuleCondition| {
            validate(&rule(
                MatchMode::All,
                vec![cond(RuleField::Serial, RuleOp::Is, "A"), c],
            ))
            .unwrap_err()
            .message
        };
        assert!(bad(cond(RuleField::Model, RuleOp::VersionAtLeast, "17"))
            .starts_with("rule.conditions[1].op"));
        assert!(bad(cond(
            RuleField::OsVersion,
            RuleOp::VersionAtLeast,
            "seventeen"
        ))
        .starts_with("rule.conditions[1].value"));
        assert!(bad(cond(RuleField::Platform, RuleOp::Is, "android")).contains("not a platform"));
        assert!(bad(cond(RuleField::Ownership, RuleOp::Is, "leased")).contains("ownership"));
        assert!(bad(cond(RuleField::Serial, RuleOp::Is, " ")).contains("empty"));
        assert!(validate(&rule(MatchMode::Any, Vec::new())).is_err());
    }
}
