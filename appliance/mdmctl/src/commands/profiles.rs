//! Running `mdmctl groups ...` and `mdmctl profiles ...`: local checks, the calls to
//! `/api/v1/groups` and `/api/v1/profiles`, and what is printed.

use std::io::IsTerminal as _;
use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde_json::{json, Map, Value};

use super::abm::serials_of;
use super::{get, list_pages, read_named, segment, send, Output, Pages, Query};
use crate::cli::abm::SerialArgs;
use crate::cli::profiles::{
    Condition, GroupCreate, GroupUpdate, GroupsCommand, MatchArg, ProfileStatus, ProfileTargets,
    ProfilesCommand,
};
use crate::client::{ApiClient, RequestBody, API_PREFIX};
use crate::error::CliError;
use crate::render::profiles as render;
use crate::table::clean;

/// The appliance takes at most this many serial numbers in one request; longer lists are
/// sent in batches of this size.
const SERIALS_PER_REQUEST: usize = 10_000;
/// The content type of a configuration profile, signed or not.
const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// `/groups/KEY`.
fn group_path(key: &str) -> Result<String, CliError> {
    Ok(format!("/groups/{}", segment(key, "group ID or name")?))
}

/// `/profiles/KEY`.
fn profile_path(key: &str) -> Result<String, CliError> {
    Ok(format!(
        "/profiles/{}",
        segment(key, "profile ID, name or identifier")?
    ))
}

/// The `name` of a group or profile answer, for messages.
fn name_of(v: &Value) -> String {
    v.get("name")
        .and_then(Value::as_str)
        .map_or_else(|| "?".to_owned(), clean)
}

/// Runs a `groups` subcommand.
pub async fn groups(
    client: &mut ApiClient,
    command: &GroupsCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        GroupsCommand::List => {
            let v = get(client, "/groups").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::groups(&v))
            })
        }
        GroupsCommand::Show { group } => {
            let v = get(client, &group_path(group)?).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::group(&v))
            })
        }
        GroupsCommand::Create(args) => create(client, args, json).await,
        GroupsCommand::Update(args) => update(client, args, json).await,
        GroupsCommand::Delete { group } => {
            let v = send(
                client,
                Method::DELETE,
                &group_path(group)?,
                RequestBody::Empty,
            )
            .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!("deleted group {}", clean(group.trim())))
            })
        }
        GroupsCommand::Members {
            group,
            limit,
            after,
            all,
        } => {
            let collection = format!("{}/members", group_path(group)?);
            let page = list_pages(
                client,
                &collection,
                &Query::default(),
                *limit,
                after.as_deref(),
                *all,
            )
            .await?;
            if json {
                return Ok(Output::json(&json!({
                    "items": page.items, "next": page.next, "total": page.total,
                })));
            }
            Ok(paged(
                Output::text(render::members(&page.items)),
                &page,
                page.items.len(),
                "members",
            ))
        }
        GroupsCommand::Add { group, serials } => {
            change_members(client, group, serials, true, json).await
        }
        GroupsCommand::Remove { group, serials } => {
            change_members(client, group, serials, false, json).await
        }
    }
}

/// Adds the stderr lines under a paged list: how many are shown, and how to get more.
fn paged(out: Output, page: &Pages, shown: usize, what: &str) -> Output {
    let mut out = out.note(match page.total {
        Some(total) => format!("{shown} of {total} {what}"),
        None => format!("{shown} {what}"),
    });
    if let Some(next) = &page.next {
        out = out.note(format!(
            "more {what} follow: add --after {} (or --all)",
            clean(next)
        ));
    }
    out
}

/// A rule as the API takes it.
fn rule_json(mode: MatchArg, conditions: &[Condition]) -> Value {
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|c| json!({"field": c.field, "op": c.op, "value": c.value}))
        .collect();
    json!({"match": mode.api_name(), "conditions": conditions})
}

/// The serial numbers of `groups create`: none is fine (an empty static group), but a
/// members file that holds none is probably the wrong file.
fn create_members(args: &GroupCreate) -> Result<Vec<String>, CliError> {
    if args.members.is_empty() && args.members_file.is_none() {
        return Ok(Vec::new());
    }
    let given = SerialArgs {
        serials: args.members.clone(),
        file: args.members_file.clone(),
    };
    serials_of(&given).map_err(|e| match (e, &args.members_file) {
        (CliError::NoSerials, Some(file)) => CliError::Usage(format!(
            "--members-file {} holds no serial numbers (one per line; blank lines and \
             '#' comments are skipped)",
            file.display()
        )),
        (e, _) => e,
    })
}

/// The body of `POST /groups`: only what was given. `members` are the first batch.
fn create_request(args: &GroupCreate, members: &[String]) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name.trim()));
    if let Some(d) = &args.description {
        body.insert("description".into(), json!(d.trim()));
    }
    if !args.conditions.is_empty() {
        let mode = args.rule_match.unwrap_or(MatchArg::All);
        body.insert("rule".into(), rule_json(mode, &args.conditions));
    }
    if !members.is_empty() {
        body.insert("members".into(), json!(members));
    }
    Value::Object(body)
}

async fn create(
    client: &mut ApiClient,
    args: &GroupCreate,
    json: bool,
) -> Result<Output, CliError> {
    let members = create_members(args)?;
    let mut batches = members.chunks(SERIALS_PER_REQUEST);
    let first = batches.next().unwrap_or_default();
    let body = create_request(args, first);
    let mut v = send(client, Method::POST, "/groups", RequestBody::Json(body)).await?;
    let rest: Vec<&[String]> = batches.collect();
    if !rest.is_empty() {
        // The group exists now: the rest go in by its ID, which a rename cannot change.
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| CliError::BadResponse {
                url: format!("{}{API_PREFIX}/groups", client.origin()),
                reason: "the answer has no \"id\" field".into(),
            })?
            .to_owned();
        let path = format!("{}/members", group_path(&id)?);
        for batch in rest {
            send(
                client,
                Method::POST,
                &path,
                RequestBody::Json(json!({ "add": batch })),
            )
            .await?;
        }
        v = get(client, &group_path(&id)?).await?;
    }
    Ok(if json {
        Output::json(&v)
    } else {
        Output::text(render::group(&v)).note(format!("group {} created", name_of(&v)))
    })
}

/// The body of `PATCH /groups/KEY`. `current` is the group as it is, needed when only one of
/// the match mode and the conditions is given (the API replaces the whole rule).
fn update_request(args: &GroupUpdate, current: Option<&Value>) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(name) = &args.name {
        body.insert("name".into(), json!(name.trim()));
    }
    if let Some(d) = &args.description {
        body.insert("description".into(), json!(d.trim()));
    }
    if args.rule_match.is_some() || !args.conditions.is_empty() {
        let rule = current
            .and_then(|g| g.get("rule"))
            .filter(|r| r.is_object());
        let mode = match (args.rule_match, rule) {
            (Some(m), _) => m,
            (None, Some(r)) if r.get("match").and_then(Value::as_str) == Some("any") => {
                MatchArg::Any
            }
            (None, _) => MatchArg::All,
        };
        let body_rule = if args.conditions.is_empty() {
            let Some(rule) = rule else {
                return Err(CliError::Usage(format!(
                    "group {} has no rule whose match mode could change: it is a static group \
                     (a rule-based group is made with `mdmctl groups create NAME --where ...`)",
                    clean(args.group.trim())
                )));
            };
            let mut rule = rule.clone();
            rule["match"] = json!(mode.api_name());
            rule
        } else {
            rule_json(mode, &args.conditions)
        };
        body.insert("rule".into(), body_rule);
    }
    Ok(Value::Object(body))
}

async fn update(
    client: &mut ApiClient,
    args: &GroupUpdate,
    json: bool,
) -> Result<Output, CliError> {
    let path = group_path(&args.group)?;
    // Only a partial rule change needs to know the rule it changes.
    let has_conditions = !args.conditions.is_empty();
    let partial = args.rule_match.is_some() != has_conditions;
    let current = if partial {
        Some(get(client, &path).await?)
    } else {
        None
    };
    let body = update_request(args, current.as_ref())?;
    let v = send(client, Method::PATCH, &path, RequestBody::Json(body)).await?;
    Ok(if json {
        Output::json(&v)
    } else {
        Output::text(render::group(&v)).note(format!("group {} updated", name_of(&v)))
    })
}

/// Adds the counts of one batch's answer to `total` (the shape of the members answer).
fn add_counts(total: &mut Value, batch: &Value) {
    for path in [
        &["added"][..],
        &["removed"],
        &["unchanged"],
        &["reconcile", "devices"],
        &["reconcile", "installs"],
        &["reconcile", "removals"],
    ] {
        let n = |v: &Value| {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let sum = n(total) + n(batch);
        match path {
            [key] => total[*key] = json!(sum),
            [outer, inner] => total[*outer][*inner] = json!(sum),
            _ => {}
        }
    }
}

async fn change_members(
    client: &mut ApiClient,
    group: &str,
    serials: &SerialArgs,
    adding: bool,
    json: bool,
) -> Result<Output, CliError> {
    let list = serials_of(serials)?;
    let path = format!("{}/members", group_path(group)?);
    let key = if adding { "add" } else { "remove" };
    let v = if list.len() <= SERIALS_PER_REQUEST {
        send(
            client,
            Method::POST,
            &path,
            RequestBody::Json(json!({ key: list })),
        )
        .await?
    } else {
        let mut total = json!({"added": 0, "removed": 0, "unchanged": 0,
                               "reconcile": {"devices": 0, "installs": 0, "removals": 0}});
        for batch in list.chunks(SERIALS_PER_REQUEST) {
            let body = RequestBody::Json(json!({ key: batch }));
            add_counts(&mut total, &send(client, Method::POST, &path, body).await?);
        }
        total
    };
    Ok(if json {
        Output::json(&v)
    } else {
        Output::text(render::members_changed(&v, group.trim(), adding))
    })
}

/// Runs a `profiles` subcommand.
pub async fn profiles(
    client: &mut ApiClient,
    command: &ProfilesCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        ProfilesCommand::List => {
            let v = get(client, "/profiles").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profiles(&v))
            })
        }
        ProfilesCommand::Show { profile } => {
            let v = get(client, &profile_path(profile)?).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profile(&v))
            })
        }
        ProfilesCommand::Upload { file, name } => {
            let bytes = read_profile_file(file)?;
            let mut q = Query::default();
            q.opt("name", name.as_deref().map(str::trim));
            let path = format!("/profiles{}", q.text());
            let v = send(client, Method::POST, &path, profile_body(bytes)).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let name = name_of(&v);
            Ok(Output::text(render::profile(&v))
                .note(format!(
                    "profile {} uploaded; assign it with `mdmctl profiles assign {} --group GROUP`",
                    clean(&name),
                    shell_word(&name)
                ))
                .notes(render::warning_notes(&v)))
        }
        ProfilesCommand::Replace { profile, file } => {
            let bytes = read_profile_file(file)?;
            let v = send(
                client,
                Method::PUT,
                &profile_path(profile)?,
                profile_body(bytes),
            )
            .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profile(&v))
                    .note(format!(
                        "profile {} replaced; devices that have it get the new version",
                        name_of(&v)
                    ))
                    .notes(render::warning_notes(&v))
            })
        }
        ProfilesCommand::Delete { profile, yes } => {
            let path = profile_path(profile)?;
            if !yes {
                let current = get(client, &path).await?;
                confirm_delete(&current)?;
            }
            let v = send(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(format!(
                    "deleted profile {}\n{}\n",
                    clean(profile.trim()),
                    render::reconcile(&v["reconcile"])
                ))
            })
        }
        ProfilesCommand::Download { profile, out } => {
            let path = format!("{API_PREFIX}{}/file", profile_path(profile)?);
            let bytes = client.call(Method::GET, &path, RequestBody::Empty).await?;
            download_output(
                &bytes,
                out.as_deref(),
                json,
                std::io::stdout().is_terminal(),
            )
        }
        ProfilesCommand::Assign(targets) => assignment(client, targets, true, json).await,
        ProfilesCommand::Unassign(targets) => assignment(client, targets, false, json).await,
        ProfilesCommand::Status(args) => status(client, args, json).await,
        ProfilesCommand::Retry { profile } => {
            let path = format!("{}/retry", profile_path(profile)?);
            let v = send(client, Method::POST, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&render::reconcile(&v["reconcile"]))
            })
        }
    }
}

/// A name as one shell word in a suggested command: quoted when it holds anything but
/// letters, digits and `._-`.
fn shell_word(name: &str) -> String {
    let name = clean(name);
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        name
    } else {
        format!("'{}'", name.replace('\'', "'\\''"))
    }
}

/// Reads a profile file with the one check that needs no parsing: it is not empty. The
/// appliance validates the rest and names the field that is wrong.
fn read_profile_file(path: &Path) -> Result<Bytes, CliError> {
    let bytes = read_named(path)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CliError::Usage(format!(
            "{} is empty; give a .mobileconfig file",
            path.display()
        )));
    }
    Ok(Bytes::from(bytes))
}

fn profile_body(bytes: Bytes) -> RequestBody {
    // Sent as read: a signed profile's signature covers every byte.
    RequestBody::Raw {
        content_type: PROFILE_CONTENT_TYPE,
        bytes,
    }
}

/// Refuses to delete a profile that is still assigned without `--yes`: deleting it removes
/// it from every device that has it.
fn confirm_delete(profile: &Value) -> Result<(), CliError> {
    let len = |key: &str| {
        profile
            .get(key)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    let (groups, devices) = (len("groups"), len("devices"));
    if groups == 0 && devices == 0 {
        return Ok(());
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    Err(CliError::Unconfirmed {
        action: format!(
            "profile {} is assigned to {} and {}; deleting it removes it from every device \
             that has it",
            name_of(profile),
            plural(groups, "group", "groups"),
            plural(devices, "device", "devices"),
        ),
        flag: "--yes",
    })
}

/// Control characters other than line breaks and tabs: a file holding them (a signed,
/// DER-encoded profile, or one with escape sequences) is not sent to a terminal.
fn is_terminal_safe(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    })
}

/// What `profiles download` prints, or writes to `out`.
fn download_output(
    bytes: &[u8],
    out: Option<&Path>,
    json: bool,
    stdout_is_terminal: bool,
) -> Result<Output, CliError> {
    if let Some(file) = out {
        std::fs::write(file, bytes).map_err(|source| CliError::OutputFile {
            path: file.to_path_buf(),
            source,
        })?;
        return Ok(Output::line(&format!(
            "profile written to {} ({} bytes)",
            file.display(),
            bytes.len()
        )));
    }
    if json {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        return Ok(Output::json(
            &json!({ "size": bytes.len(), "base64": encoded }),
        ));
    }
    if stdout_is_terminal && !is_terminal_safe(bytes) {
        return Err(CliError::Usage(
            "the profile is binary (a signed profile is DER) and is not printed on a \
             terminal; write it with -o FILE or redirect standard output"
                .into(),
        ));
    }
    Ok(Output {
        binary: bytes.to_vec(),
        ..Output::default()
    })
}

/// The body of `assign` and `unassign`: the groups as given, the serial numbers checked.
fn targets_request(targets: &ProfileTargets) -> Result<Value, CliError> {
    let groups: Vec<&str> = targets.groups.iter().map(|g| g.trim()).collect();
    if groups.iter().any(|g| g.is_empty()) {
        return Err(CliError::Usage(
            "--group needs a group ID or name, not an empty value".into(),
        ));
    }
    let devices = if targets.devices.is_empty() {
        Vec::new()
    } else {
        serials_of(&SerialArgs {
            serials: targets.devices.clone(),
            file: None,
        })?
    };
    Ok(json!({ "groups": groups, "devices": devices }))
}

async fn assignment(
    client: &mut ApiClient,
    targets: &ProfileTargets,
    assign: bool,
    json: bool,
) -> Result<Output, CliError> {
    let body = targets_request(targets)?;
    let action = if assign { "assign" } else { "unassign" };
    let path = format!("{}/{action}", profile_path(&targets.profile)?);
    let v = send(client, Method::POST, &path, RequestBody::Json(body)).await?;
    Ok(if json {
        Output::json(&v)
    } else {
        Output::text(render::assignment_change(&v))
    })
}

/// Keeps the installs whose state is one of `states` (all of them when it is empty).
fn filter_states(items: Vec<Value>, states: &[&str]) -> Vec<Value> {
    if states.is_empty() {
        return items;
    }
    items
        .into_iter()
        .filter(|i| {
            i.get("state")
                .and_then(Value::as_str)
                .is_some_and(|s| states.contains(&s))
        })
        .collect()
}

async fn status(
    client: &mut ApiClient,
    args: &ProfileStatus,
    json: bool,
) -> Result<Output, CliError> {
    let collection = format!("{}/installs", profile_path(&args.profile)?);
    let page = list_pages(
        client,
        &collection,
        &Query::default(),
        args.limit,
        args.after.as_deref(),
        args.all,
    )
    .await?;
    let states: Vec<&str> = args.states.iter().map(|s| s.api_name()).collect();
    let fetched = page.items.len();
    let shown = filter_states(page.items, &states);
    if json {
        return Ok(Output::json(&json!({ "items": shown, "next": page.next })));
    }
    let mut out = Output::text(render::installs(&shown)).note(render::installs_shown(
        shown.len(),
        fetched,
        !states.is_empty(),
    ));
    if let Some(next) = page.next {
        out = out.note(format!(
            "more installs follow: add --after {} (or --all)",
            clean(&next)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::profiles::parse_condition;
    use std::path::PathBuf;

    fn conditions(list: &[&str]) -> Vec<Condition> {
        list.iter()
            .map(|c| parse_condition(c).expect("condition"))
            .collect()
    }

    fn create_args() -> GroupCreate {
        GroupCreate {
            name: " New iPads ".into(),
            description: None,
            rule_match: None,
            conditions: Vec::new(),
            members: Vec::new(),
            members_file: None,
        }
    }

    fn update_args() -> GroupUpdate {
        GroupUpdate {
            group: "ipads".into(),
            name: None,
            description: None,
            rule_match: None,
            conditions: Vec::new(),
        }
    }

    #[test]
    fn create_sends_a_rule_or_members() {
        assert_eq!(
            create_request(&create_args(), &[]),
            json!({"name": "New iPads"})
        );
        let rule = GroupCreate {
            description: Some(" iPadOS 17.4+ ".into()),
            conditions: conditions(&["os_version version_at_least 17.4", "platform is ipados"]),
            ..create_args()
        };
        assert_eq!(
            create_request(&rule, &[]),
            json!({"name": "New iPads", "description": "iPadOS 17.4+",
                   "rule": {"match": "all", "conditions": [
                       {"field": "os_version", "op": "version_at_least", "value": "17.4"},
                       {"field": "platform", "op": "is", "value": "ipados"}]}})
        );
        let any = GroupCreate {
            rule_match: Some(MatchArg::Any),
            ..rule
        };
        assert_eq!(create_request(&any, &[])["rule"]["match"], "any");
        assert_eq!(
            create_request(&create_args(), &["C02X1".into()]),
            json!({"name": "New iPads", "members": ["C02X1"]})
        );
    }

    #[test]
    fn create_members_come_from_flags_and_a_file() {
        assert!(create_members(&create_args()).expect("none").is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("carts.txt");
        std::fs::write(&file, "# cart 1\nc02x1\n\nDMPX2\n").expect("write");
        let args = GroupCreate {
            members: vec!["f2lx3".into(), "C02X1".into()],
            members_file: Some(file.clone()),
            ..create_args()
        };
        assert_eq!(
            create_members(&args).expect("serials"),
            ["F2LX3", "C02X1", "DMPX2"]
        );
        std::fs::write(&file, "# nothing yet\n").expect("write");
        let args = GroupCreate {
            members_file: Some(file),
            ..create_args()
        };
        let err = create_members(&args).expect_err("empty file");
        assert!(err.to_string().contains("holds no serial numbers"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let args = GroupCreate {
            members: vec!["not-a-serial".into()],
            ..create_args()
        };
        assert!(matches!(
            create_members(&args),
            Err(CliError::Serial { .. })
        ));
    }

    #[test]
    fn updates_send_only_what_changes_and_keep_the_rest_of_the_rule() {
        let rename = GroupUpdate {
            name: Some(" Lab carts ".into()),
            description: Some(String::new()),
            ..update_args()
        };
        assert_eq!(
            update_request(&rename, None).expect("body"),
            json!({"name": "Lab carts", "description": ""})
        );

        let current = json!({"kind": "rule", "rule": {"match": "any", "conditions": [
            {"field": "serial", "op": "starts_with", "value": "C02"}]}});
        let mode_only = GroupUpdate {
            rule_match: Some(MatchArg::All),
            ..update_args()
        };
        assert_eq!(
            update_request(&mode_only, Some(&current)).expect("body"),
            json!({"rule": {"match": "all", "conditions": [
                {"field": "serial", "op": "starts_with", "value": "C02"}]}})
        );
        let static_group = json!({"kind": "static", "rule": null});
        let err = update_request(&mode_only, Some(&static_group)).expect_err("static");
        assert!(
            err.to_string()
                .contains("has no rule whose match mode could change: it is a static group"),
            "{err}"
        );

        let conditions_only = GroupUpdate {
            conditions: conditions(&["model starts_with iPad13"]),
            ..update_args()
        };
        assert_eq!(
            update_request(&conditions_only, Some(&current)).expect("body"),
            json!({"rule": {"match": "any", "conditions": [
                {"field": "model", "op": "starts_with", "value": "iPad13"}]}}),
            "the match mode stays"
        );
        let both = GroupUpdate {
            rule_match: Some(MatchArg::All),
            ..conditions_only
        };
        assert_eq!(
            update_request(&both, None).expect("body")["rule"]["match"],
            "all"
        );
    }

    #[test]
    fn batch_counts_add_up() {
        let mut total = json!({"added": 0, "removed": 0, "unchanged": 0,
                               "reconcile": {"devices": 0, "installs": 0, "removals": 0}});
        add_counts(
            &mut total,
            &json!({"added": 3, "removed": 0, "unchanged": 1,
                    "reconcile": {"devices": 3, "installs": 3, "removals": 0}}),
        );
        add_counts(
            &mut total,
            &json!({"added": 2, "removed": 0, "unchanged": 0,
                    "reconcile": {"devices": 2, "installs": 4, "removals": 1}}),
        );
        assert_eq!(
            total,
            json!({"added": 5, "removed": 0, "unchanged": 1,
                   "reconcile": {"devices": 5, "installs": 7, "removals": 1}})
        );
    }

    #[test]
    fn assigned_profiles_need_yes_to_be_deleted() {
        assert!(confirm_delete(&json!({"name": "Fonts", "groups": [], "devices": []})).is_ok());
        let err = confirm_delete(
            &json!({"name": "Wi-Fi", "groups": [{"id": "g", "name": "x"}],
                                         "devices": ["A1", "B2"]}),
        )
        .expect_err("assigned");
        assert_eq!(
            err.to_string(),
            "profile Wi-Fi is assigned to 1 group and 2 devices; deleting it removes it from \
             every device that has it; add --yes to confirm"
        );
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn targets_are_checked_before_sending() {
        let t = ProfileTargets {
            profile: "wifi".into(),
            groups: vec![" carts ".into()],
            devices: vec!["c02x1".into(), "C02X1".into()],
        };
        assert_eq!(
            targets_request(&t).expect("body"),
            json!({"groups": ["carts"], "devices": ["C02X1"]})
        );
        let blank = ProfileTargets {
            groups: vec![" ".into()],
            devices: Vec::new(),
            ..t
        };
        assert!(matches!(targets_request(&blank), Err(CliError::Usage(_))));
        let bad = ProfileTargets {
            profile: "wifi".into(),
            groups: Vec::new(),
            devices: vec!["C02 X1".into()],
        };
        assert!(matches!(
            targets_request(&bad),
            Err(CliError::Serial { .. })
        ));
    }

    #[test]
    fn states_filter_the_fetched_installs() {
        let items = vec![
            json!({"serial": "A", "state": "installed"}),
            json!({"serial": "B", "state": "failed"}),
            json!({"serial": "C", "state": "removing"}),
            json!({"serial": "D"}),
        ];
        assert_eq!(filter_states(items.clone(), &[]).len(), 4);
        let kept = filter_states(items, &["failed", "removing"]);
        let serials: Vec<&str> = kept.iter().filter_map(|i| i["serial"].as_str()).collect();
        assert_eq!(serials, ["B", "C"]);
    }

    #[test]
    fn downloads_go_to_a_file_or_stdout_but_not_binary_to_a_terminal() {
        let xml = b"<?xml version=\"1.0\"?>\n<plist version=\"1.0\"><dict/></plist>\n";
        let der = [0x30_u8, 0x82, 0x01, 0x00, 0x06, 0x09];

        let out = download_output(xml, None, false, true).expect("text on a terminal");
        assert_eq!(out.binary, xml);
        assert!(out.stdout.is_empty());
        let out = download_output(&der, None, false, false).expect("binary to a pipe");
        assert_eq!(out.binary, der);
        let err = download_output(&der, None, false, true).expect_err("binary on a terminal");
        assert!(err.to_string().contains("-o FILE"), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!(!is_terminal_safe(b"evil\x1b[2J"));

        let out = download_output(&der, None, true, true).expect("json");
        let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(v["size"], 6);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(v["base64"].as_str().expect("base64"))
                .expect("decode"),
            der
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wifi.mobileconfig");
        let out = download_output(&der, Some(&file), false, true).expect("file");
        assert_eq!(std::fs::read(&file).expect("read"), der);
        assert!(out.binary.is_empty());
        assert!(
            out.stdout.ends_with("wifi.mobileconfig (6 bytes)\n"),
            "{}",
            out.stdout
        );
        let missing = PathBuf::from("/nonexistent-dir/x.mobileconfig");
        assert!(matches!(
            download_output(&der, Some(&missing), false, false),
            Err(CliError::OutputFile { .. })
        ));
    }

    #[test]
    fn profile_files_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.mobileconfig");
        std::fs::write(&empty, " \n").expect("write");
        let err = read_profile_file(&empty).expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");
        assert!(matches!(
            read_profile_file(&dir.path().join("none")),
            Err(CliError::InputFile { .. })
        ));
    }

    #[test]
    fn suggested_names_are_one_shell_word() {
        assert_eq!(shell_word("wifi-2.0"), "wifi-2.0");
        assert_eq!(shell_word("School Wi-Fi"), "'School Wi-Fi'");
        assert_eq!(shell_word("Ada's"), "'Ada'\\''s'");
    }
}
