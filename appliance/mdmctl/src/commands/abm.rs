//! Running `mdmctl abm ...`: local checks, the calls to `/api/v1/abm`, and what is printed.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use http::Method;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{get, list_pages, read_input, read_named, segment, Output, Query};
use crate::cli::abm::{
    AbmAdd, AbmCommand, AbmDevices, AbmDisown, AbmProfileCommand, AbmRuleSet, AbmRulesCommand,
    AbmSet, AbmTokenCommand, SerialArgs,
};
use crate::client::{encode_query, ApiClient, RequestBody, API_PREFIX, APPLE_TIMEOUT};
use crate::error::CliError;
use crate::render::abm as render;
use crate::table::clean;

/// The appliance refuses larger token uploads; a real `.p7m` is a few kilobytes.
const MAX_SERVER_TOKEN_BYTES: usize = 1024 * 1024;
/// Longest serial number the appliance accepts.
const MAX_SERIAL_CHARS: usize = 64;
/// How many serial numbers a message lists before it counts the rest.
const LISTED_SERIALS: usize = 10;
/// Per-serial outcomes of an assignment that are not failures: `PENDING` is queued for the
/// appliance's next assignment run (a device in a cool-down, say).
const ASSIGN_OK: &[&str] = &["SUCCESS", "PENDING"];
/// Per-serial outcomes of a removal or disown that are not failures.
const DONE_OK: &[&str] = &["SUCCESS"];

/// A call that makes the appliance talk to Apple before it answers, with the long limit.
async fn slow(
    client: &mut ApiClient,
    method: Method,
    path: &str,
    body: RequestBody,
) -> Result<Value, CliError> {
    client
        .json_within(method, &format!("{API_PREFIX}{path}"), body, APPLE_TIMEOUT)
        .await
}

/// `/abm/NAME`.
fn conn(name: &str) -> Result<String, CliError> {
    Ok(format!("/abm/{}", segment(name, "connection name")?))
}

/// Runs an `abm` subcommand. `json` selects the API's JSON as output.
pub async fn execute(
    client: &mut ApiClient,
    command: &AbmCommand,
    json: bool,
) -> Result<Output, CliError> {
    let now = OffsetDateTime::now_utc();
    match command {
        AbmCommand::Add(add) => {
            let body = add_request(add)?;
            let v = slow(client, Method::POST, "/abm", RequestBody::Json(body)).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let mut out = Output::text(render::connection(&v, now))
                .note(format!("ABM connection {} created", add.name));
            if let Some(action) = v.get("action").and_then(Value::as_str) {
                out = out.note(format!("next: {}", clean(action)));
            }
            Ok(out)
        }
        AbmCommand::PublicKey { name, new, out } => {
            public_key(client, name, *new, out.as_deref(), json).await
        }
        AbmCommand::Token {
            command: AbmTokenCommand::Upload { name, file, force },
        } => {
            let bytes = read_server_token(file)?;
            let query = if *force { "?force=true" } else { "" };
            let path = format!("{}/token{query}", conn(name)?);
            let body = RequestBody::Raw {
                content_type: "application/pkcs7-mime",
                bytes: Bytes::from(bytes),
            };
            let v = slow(client, Method::PUT, &path, body).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let uploaded = format!(
                "server token uploaded to {name}: {}, MDM server {}",
                clean(v["account"]["org_name"].as_str().unwrap_or("-")),
                clean(v["account"]["server_name"].as_str().unwrap_or("-")),
            );
            Ok(Output::text(render::connection(&v, now))
                .note(uploaded)
                .notes(render::attention_note(&v)))
        }
        AbmCommand::List => {
            let v = get(client, "/abm").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::connections(&v)).notes(render::attention_notes(&v))
            })
        }
        AbmCommand::Show { name } => {
            let v = get(client, &conn(name)?).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::connection(&v, now))
            })
        }
        AbmCommand::Set(set) => {
            let body = set_request(set)?;
            let v = slow(
                client,
                Method::PATCH,
                &conn(&set.name)?,
                RequestBody::Json(body),
            )
            .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::connection(&v, now))
                    .note(format!("ABM connection {} updated", set.name))
            })
        }
        AbmCommand::Delete { name, yes } => {
            if !yes {
                return Err(CliError::Unconfirmed {
                    action: format!(
                        "deleting ABM connection {name} forgets its server token, device list, \
                         profiles and rules (the devices stay assigned to the MDM server in \
                         Apple Business Manager)"
                    ),
                    flag: "--yes",
                });
            }
            let path = format!("{}?confirm={}", conn(name)?, encode_query(name));
            let v = slow(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!(
                    "deleted ABM connection {name}; nothing was changed in Apple Business Manager"
                ))
            })
        }
        AbmCommand::Sync { name, full } => {
            let query = if *full { "?full=true" } else { "" };
            let path = format!("{}/sync{query}", conn(name)?);
            let v = slow(client, Method::POST, &path, RequestBody::Empty).await?;
            let out = if json {
                Output::json(&v)
            } else {
                Output::text(render::sync_run(&v))
            };
            Ok(out.failing(failed_run(&v)))
        }
        AbmCommand::AssignNow { name } => {
            let path = format!("{}/assign", conn(name)?);
            let v = slow(client, Method::POST, &path, RequestBody::Empty).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let (summary, warning) = render::assign_report(&v, name);
            Ok(Output::text(summary).notes(warning))
        }
        AbmCommand::Devices(args) => devices(client, args, json).await,
        AbmCommand::Device { name, serial } => {
            // ABM lists serial numbers in capitals; admins often type them in lower case.
            let path = format!(
                "{}/devices/{}",
                conn(name)?,
                segment(&serial.to_ascii_uppercase(), "serial number")?
            );
            let v = get(client, &path).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::device(&v))
            })
        }
        AbmCommand::Profile { command } => profile(client, command, json).await,
        AbmCommand::Disown(args) => disown(client, args, json).await,
        AbmCommand::Rules { command } => rules(client, command, json).await,
    }
}

/// The body of `POST /abm`: only what was given, so the appliance's defaults apply.
fn add_request(add: &AbmAdd) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("name".into(), json!(add.name));
    if let Some(url) = &add.url {
        body.insert("base_url".into(), json!(url.trim()));
    }
    if let Some(ca) = &add.abm_ca {
        body.insert("ca_pem".into(), json!(read_abm_ca(ca)?));
    }
    if let Some(interval) = add.interval {
        body.insert("interval_seconds".into(), json!(interval));
    }
    Ok(Value::Object(body))
}

/// The body of `PATCH /abm/NAME`. An empty string is the API's way to clear a setting.
fn set_request(set: &AbmSet) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(interval) = set.interval {
        body.insert("interval_seconds".into(), json!(interval));
    }
    if let Some(profile) = &set.default_profile {
        body.insert("default_profile".into(), json!(profile));
    } else if set.no_default_profile {
        body.insert("default_profile".into(), json!(""));
    }
    if let Some(url) = &set.url {
        body.insert("base_url".into(), json!(url.trim()));
    }
    if let Some(ca) = &set.abm_ca {
        body.insert("ca_pem".into(), json!(read_abm_ca(ca)?));
    } else if set.system_ca {
        body.insert("ca_pem".into(), json!(""));
    }
    Ok(Value::Object(body))
}

/// Reads and checks a `--abm-ca` file: PEM text with at least one certificate that parses,
/// so a wrong file fails here rather than as a TLS error at the next sync.
fn read_abm_ca(path: &Path) -> Result<String, CliError> {
    let bad = |reason: String| CliError::AbmCa {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_input(path)?;
    let text = String::from_utf8(bytes).map_err(|_| bad("it is not PEM text".into()))?;
    let mut certificates = 0_usize;
    for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
        cert.map_err(|e| bad(e.to_string()))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(bad("no BEGIN CERTIFICATE block found".into()));
    }
    Ok(text)
}

/// Reads a server token file with the checks that need no key: not empty, not larger than
/// the appliance takes. Decrypting it is the appliance's job (only it has the key).
fn read_server_token(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = read_input(path)?;
    let bad = |reason: &str| CliError::ServerToken {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the file is empty"));
    }
    if bytes.len() > MAX_SERVER_TOKEN_BYTES {
        return Err(bad("the file is larger than 1 MiB"));
    }
    Ok(bytes)
}

/// A sync the API reports as failed in a success answer: its error, for the exit code.
fn failed_run(run: &Value) -> Option<CliError> {
    if run.get("result").and_then(Value::as_str) == Some("ok") {
        return None;
    }
    let error = run.get("error");
    let field = |key: &str| {
        error
            .and_then(|e| e.get(key))
            .and_then(Value::as_str)
            .map(clean)
    };
    Some(CliError::Api {
        status: 200,
        code: field("code").unwrap_or_else(|| "ABM_SYNC_FAILED".into()),
        message: field("message")
            .unwrap_or_else(|| "the sync did not complete; see `mdmctl abm show`".into()),
    })
}

async fn public_key(
    client: &mut ApiClient,
    name: &str,
    new: bool,
    out: Option<&Path>,
    json: bool,
) -> Result<Output, CliError> {
    let path = format!("{API_PREFIX}{}/public-key", conn(name)?);
    let method = if new { Method::POST } else { Method::GET };
    let body = client.call(method, &path, RequestBody::Empty).await?;
    let pem = std::str::from_utf8(&body)
        .ok()
        .filter(|t| t.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| CliError::BadResponse {
            url: format!("{}{path}", client.origin()),
            reason: "the answer is not a PEM certificate".into(),
        })?
        .to_owned();
    let mut notes = Vec::new();
    if new {
        notes.push(format!(
            "a new key pair is staged for {name}; the current token (if any) keeps working \
             until a token made for this key is uploaded"
        ));
    }
    notes.push(format!(
        "upload the certificate to the MDM server in Apple Business Manager (Preferences > \
         Your MDM Servers), download its server token and run \
         `mdmctl abm token upload {name} FILE.p7m`"
    ));
    let output = match out {
        Some(file) => {
            std::fs::write(file, &pem).map_err(|source| CliError::OutputFile {
                path: file.to_path_buf(),
                source,
            })?;
            Output::line(&format!(
                "public key certificate of {name} written to {}",
                file.display()
            ))
        }
        None if json => Output::json(&json!({ "pem": pem })),
        None if pem.ends_with('\n') => Output::text(pem),
        None => Output::line(&pem),
    };
    Ok(output.notes(notes))
}

async fn devices(
    client: &mut ApiClient,
    args: &AbmDevices,
    json: bool,
) -> Result<Output, CliError> {
    let collection = format!("{}/devices", conn(&args.name)?);
    if args.csv {
        if json {
            return Err(CliError::Usage(
                "--csv and --json cannot be combined: --csv prints the appliance's CSV export \
                 as it is"
                    .into(),
            ));
        }
        let path = format!("{API_PREFIX}{collection}?format=csv");
        // The export walks every device on the appliance before answering.
        let body = client
            .call_within(Method::GET, &path, RequestBody::Empty, APPLE_TIMEOUT)
            .await?;
        let csv = String::from_utf8(body.to_vec()).map_err(|_| CliError::BadResponse {
            url: format!("{}{path}", client.origin()),
            reason: "the CSV export is not UTF-8 text".into(),
        })?;
        return Ok(Output::text(csv));
    }
    let page = list_pages(
        client,
        &collection,
        &Query::default(),
        args.limit,
        args.after.as_deref(),
        args.all,
    )
    .await?;
    if json {
        return Ok(Output::json(
            &json!({ "items": page.items, "next": page.next }),
        ));
    }
    let mut out = Output::text(render::devices(&page.items));
    if let Some(next) = page.next {
        out = out.note(format!(
            "more devices follow: add --after {} (or --all)",
            clean(&next)
        ));
    }
    Ok(out)
}

async fn profile(
    client: &mut ApiClient,
    command: &AbmProfileCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        AbmProfileCommand::Define {
            name,
            profile,
            file,
        } => {
            let bytes = read_profile(file)?;
            let path = format!("{}/profiles/{}", conn(name)?, segment(profile, "profile")?);
            // Sent as written: the appliance checks every field and names the wrong one.
            let body = RequestBody::Raw {
                content_type: "application/json",
                bytes: Bytes::from(bytes),
            };
            let v = slow(client, Method::PUT, &path, body).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profile(&v)).note(format!(
                    "profile {profile} defined with Apple; the devices it covers are re-assigned"
                ))
            })
        }
        AbmProfileCommand::List { name } => {
            let v = get(client, &format!("{}/profiles", conn(name)?)).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profiles(&v))
            })
        }
        AbmProfileCommand::Show { name, profile } => {
            let path = format!("{}/profiles/{}", conn(name)?, segment(profile, "profile")?);
            let v = get(client, &path).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::profile(&v))
            })
        }
        AbmProfileCommand::Delete { name, profile } => {
            let path = format!("{}/profiles/{}", conn(name)?, segment(profile, "profile")?);
            let v = slow(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!("deleted ABM profile {profile} of {name}"))
            })
        }
        AbmProfileCommand::Assign {
            name,
            profile,
            serials,
        } => {
            let list = serials_of(serials)?;
            let path = format!(
                "{}/profiles/{}/assign",
                conn(name)?,
                segment(profile, "profile")?
            );
            let v = slow(
                client,
                Method::POST,
                &path,
                RequestBody::Json(json!({ "serials": list })),
            )
            .await?;
            Ok(per_serial(&v, json, ASSIGN_OK, "not assigned"))
        }
        AbmProfileCommand::Remove { name, serials } => {
            let list = serials_of(serials)?;
            let path = format!("{}/remove-profile", conn(name)?);
            let v = slow(
                client,
                Method::POST,
                &path,
                RequestBody::Json(json!({ "serials": list })),
            )
            .await?;
            Ok(per_serial(&v, json, DONE_OK, "still have their profile"))
        }
    }
}

/// Reads an enrollment profile file and checks that it is a JSON object, so a syntax error
/// is reported with its line and column before anything is sent.
fn read_profile(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = read_named(path)?;
    let bad = |reason: String| CliError::ProfileJson {
        path: path.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad(
            "the top level is not a JSON object of Apple's profile fields".into(),
        ));
    }
    Ok(bytes)
}

/// The output of a per-serial answer: the table (or JSON), and an error that sets the exit
/// code when a serial's outcome is not in `fine` (Apple answers 200 with failed serials).
fn per_serial(v: &Value, json: bool, fine: &[&str], missed: &str) -> Output {
    let out = if json {
        Output::json(v)
    } else {
        Output::text(render::serial_results(v))
    };
    let failed = render::unsuccessful(v, fine);
    if failed.is_empty() {
        return out;
    }
    let total = v.get("items").and_then(Value::as_array).map_or(0, Vec::len);
    let listed: Vec<String> = failed
        .iter()
        .take(LISTED_SERIALS)
        .map(|(serial, outcome)| format!("{serial} {outcome}"))
        .collect();
    let more = failed.len().saturating_sub(LISTED_SERIALS);
    let mut message = format!(
        "{} of {total} devices {missed}: {}",
        failed.len(),
        listed.join(", ")
    );
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    out.failing(Some(CliError::Api {
        status: 200,
        code: "ABM_DEVICES_FAILED".into(),
        message,
    }))
}

async fn disown(client: &mut ApiClient, args: &AbmDisown, json: bool) -> Result<Output, CliError> {
    let list = serials_of(&args.serials)?;
    let body = disown_request(&list, args.yes_disown)?;
    let path = format!("{}/disown", conn(&args.name)?);
    let v = slow(client, Method::POST, &path, RequestBody::Json(body)).await?;
    Ok(per_serial(&v, json, DONE_OK, "not disowned"))
}

/// The body of `POST .../disown`, refused locally without `--yes-disown`. The confirmation
/// counts the serials after de-duplication, as the appliance does.
fn disown_request(serials: &[String], confirmed: bool) -> Result<Value, CliError> {
    let n = serials.len();
    if !confirmed {
        let mut listed = serials
            .iter()
            .take(LISTED_SERIALS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if n > LISTED_SERIALS {
            listed.push_str(&format!(" and {} more", n - LISTED_SERIALS));
        }
        return Err(CliError::Unconfirmed {
            action: format!(
                "disowning {n} device{s} ({listed}) removes {them} from your organisation in \
                 Apple Business Manager for good: only the reseller or Apple can add {them} back",
                s = if n == 1 { "" } else { "s" },
                them = if n == 1 { "it" } else { "them" },
            ),
            flag: "--yes-disown",
        });
    }
    Ok(json!({ "serials": serials, "confirm": format!("disown {n} devices") }))
}

async fn rules(
    client: &mut ApiClient,
    command: &AbmRulesCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        AbmRulesCommand::List { name } => {
            let v = get(client, &format!("{}/rules", conn(name)?)).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::rules(&v))
            })
        }
        AbmRulesCommand::Set(set) => {
            let body = rule_request(set)?;
            let path = format!("{}/rules/{}", conn(&set.name)?, segment(&set.rule, "rule")?);
            let v = slow(client, Method::PUT, &path, RequestBody::Json(body)).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::rule(&v)).note(format!(
                    "rule {} saved; devices whose profile changes are re-assigned",
                    set.rule
                ))
            })
        }
        AbmRulesCommand::Delete { name, rule } => {
            let path = format!("{}/rules/{}", conn(name)?, segment(rule, "rule")?);
            let v = slow(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!("deleted rule {rule} of {name}"))
            })
        }
    }
}

/// The body of `PUT .../rules/RULE`: the whole rule, since PUT replaces it.
fn rule_request(set: &AbmRuleSet) -> Result<Value, CliError> {
    let serials = collect_serials(&set.serials, set.serials_file.as_deref())?;
    let attribute = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (family, model, os) = (
        attribute(&set.family),
        attribute(&set.model),
        attribute(&set.os),
    );
    if serials.is_empty() && family.is_none() && model.is_none() && os.is_none() {
        return Err(CliError::Usage(format!(
            "rule {} would match no device: give --serial, a --serials-file with serial \
             numbers, --family, --model or --os",
            set.rule
        )));
    }
    let mut body = Map::new();
    body.insert("profile".into(), json!(set.profile));
    if let Some(priority) = set.priority {
        body.insert("priority".into(), json!(priority));
    }
    body.insert("serials".into(), json!(serials));
    body.insert("device_family".into(), json!(family));
    body.insert("model".into(), json!(model));
    body.insert("os".into(), json!(os));
    Ok(Value::Object(body))
}

/// The serial numbers of a command that acts on devices: at least one.
pub(super) fn serials_of(args: &SerialArgs) -> Result<Vec<String>, CliError> {
    let serials = collect_serials(&args.serials, args.file.as_deref())?;
    if serials.is_empty() {
        return Err(CliError::NoSerials);
    }
    Ok(serials)
}

/// Serial numbers from arguments and a file (one per line; blank lines and `#` comments
/// skipped), each checked with where it came from in the error, upper-cased and without
/// repeats, in the order given. The appliance normalises the same way, which keeps the count
/// in `disown`'s confirmation the same on both sides.
fn collect_serials(args: &[String], file: Option<&Path>) -> Result<Vec<String>, CliError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |raw: &str, origin: &dyn Fn() -> String| -> Result<(), CliError> {
        let serial = raw.trim().to_ascii_uppercase();
        if serial.is_empty()
            || serial.len() > MAX_SERIAL_CHARS
            || !serial.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(CliError::Serial {
                origin: origin(),
                value: raw.to_owned(),
            });
        }
        if seen.insert(serial.clone()) {
            out.push(serial);
        }
        Ok(())
    };
    for (i, raw) in args.iter().enumerate() {
        add(raw, &|| format!("serial argument {}", i + 1))?;
    }
    if let Some(path) = file {
        let bytes = read_named(path)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            CliError::Usage(format!(
                "{} is not a text file of serial numbers",
                path.display()
            ))
        })?;
        // Spreadsheet exports often start with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            add(line, &|| format!("{} line {}", path.display(), n + 1))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn serials_are_checked_normalised_and_deduplicated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("serials.txt");
        std::fs::write(
            &file,
            "\u{feff}# lab carts\r\nc02x1\r\n\r\n  DMPX2  \nC02X1\n",
        )
        .expect("write");
        let got = collect_serials(&strings(&["dmpx2", " F2L3 "]), Some(&file)).expect("serials");
        assert_eq!(got, ["DMPX2", "F2L3", "C02X1"]);

        let err = collect_serials(&strings(&["A1", "not-a-serial"]), None).expect_err("dash");
        assert_eq!(
            err.to_string(),
            "serial argument 2: \"not-a-serial\" is not a serial number (1 to 64 letters and \
             digits, as ABM lists it)"
        );
        assert_eq!(err.exit_code(), 2);

        std::fs::write(&file, "A1\nB2\nC3 D4\n").expect("write");
        let err = collect_serials(&[], Some(&file)).expect_err("space");
        assert!(
            matches!(&err, CliError::Serial { origin, .. } if origin.ends_with("serials.txt line 3")),
            "{err}"
        );
        let long = "A".repeat(65);
        assert!(collect_serials(&[long], None).is_err());
        assert!(collect_serials(&strings(&["É1"]), None).is_err());

        std::fs::write(&file, "# nothing yet\n\n").expect("write");
        assert!(collect_serials(&[], Some(&file)).expect("empty").is_empty());
        let empty = SerialArgs {
            serials: Vec::new(),
            file: Some(file),
        };
        assert!(matches!(serials_of(&empty), Err(CliError::NoSerials)));
        let missing = SerialArgs {
            serials: Vec::new(),
            file: Some(dir.path().join("none.txt")),
        };
        assert!(matches!(
            serials_of(&missing),
            Err(CliError::InputFile { .. })
        ));
    }

    #[test]
    fn disown_needs_its_own_flag_and_counts_like_the_appliance() {
        let serials = collect_serials(&strings(&["a1", "A1", "b2"]), None).expect("serials");
        let err = disown_request(&serials, false).expect_err("unconfirmed");
        let text = err.to_string();
        assert!(
            text.starts_with("disowning 2 devices (A1, B2) removes them"),
            "{text}"
        );
        assert!(text.ends_with("; add --yes-disown to confirm"), "{text}");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            disown_request(&serials, true).expect("body"),
            json!({"serials": ["A1", "B2"], "confirm": "disown 2 devices"})
        );
        let many: Vec<String> = (0..12).map(|i| format!("S{i}")).collect();
        let text = disown_request(&many, false).expect_err("many").to_string();
        assert!(text.contains("S9 and 2 more)"), "{text}");
        assert!(!text.contains("S10"), "{text}");
    }

    #[test]
    fn add_and_set_send_only_what_was_given() {
        let add = AbmAdd {
            name: "north".into(),
            url: None,
            abm_ca: None,
            interval: None,
        };
        assert_eq!(add_request(&add).expect("body"), json!({"name": "north"}));

        let set = AbmSet {
            name: "north".into(),
            interval: Some(0),
            default_profile: None,
            no_default_profile: true,
            url: Some(" https://abm.lan:9443 ".into()),
            abm_ca: None,
            system_ca: true,
        };
        assert_eq!(
            set_request(&set).expect("body"),
            json!({"interval_seconds": 0, "default_profile": "", "base_url": "https://abm.lan:9443",
                   "ca_pem": ""})
        );
        let set = AbmSet {
            name: "north".into(),
            interval: None,
            default_profile: Some("staff".into()),
            no_default_profile: false,
            url: None,
            abm_ca: None,
            system_ca: false,
        };
        assert_eq!(
            set_request(&set).expect("body"),
            json!({"default_profile": "staff"})
        );
    }

    /// A self-signed certificate from the `openssl` CLI, or `None` without it.
    fn openssl_certificate(dir: &Path) -> Option<PathBuf> {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=ABM test CA",
            ])
            .current_dir(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(dir.join("ca.pem")),
            Ok(o) => panic!("openssl failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(_) => {
                eprintln!("openssl not installed; skipping the PEM CA check");
                None
            }
        }
    }

    #[test]
    fn the_abm_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("token.p7m");
        std::fs::write(&not_pem, "MIME-Version: 1.0\n\nabc\n").expect("write");
        let err = read_abm_ca(&not_pem).expect_err("not PEM");
        assert!(matches!(err, CliError::AbmCa { .. }), "{err:?}");
        assert!(err.to_string().contains("no BEGIN CERTIFICATE"), "{err}");
        let binary = dir.path().join("ca.der");
        std::fs::write(&binary, [0x30, 0x82, 0xff, 0xfe]).expect("write");
        assert!(matches!(read_abm_ca(&binary), Err(CliError::AbmCa { .. })));
        assert!(matches!(
            read_abm_ca(&dir.path().join("missing.pem")),
            Err(CliError::InputFile { .. })
        ));

        let Some(ca) = openssl_certificate(dir.path()) else {
            return;
        };
        let pem = std::fs::read_to_string(&ca).expect("read");
        assert_eq!(read_abm_ca(&ca).expect("PEM CA"), pem);
        let add = AbmAdd {
            name: "sim".into(),
            url: Some("https://abm-sim.lan:9443".into()),
            abm_ca: Some(ca),
            interval: Some(60),
        };
        assert_eq!(
            add_request(&add).expect("body"),
            json!({"name": "sim", "base_url": "https://abm-sim.lan:9443", "ca_pem": pem,
                   "interval_seconds": 60})
        );
    }

    #[test]
    fn server_tokens_and_profiles_are_checked_locally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.p7m");
        std::fs::write(&empty, "\n").expect("write");
        let err = read_server_token(&empty).expect_err("empty");
        assert!(err.to_string().contains("the file is empty"), "{err}");
        let big = dir.path().join("big.p7m");
        std::fs::write(&big, vec![b'a'; MAX_SERVER_TOKEN_BYTES + 1]).expect("write");
        assert!(matches!(
            read_server_token(&big),
            Err(CliError::ServerToken { .. })
        ));
        let token = dir.path().join("t.p7m");
        std::fs::write(
            &token,
            b"Content-Type: application/pkcs7-mime\r\n\r\nMIAGCSqG\r\n",
        )
        .expect("write");
        assert!(read_server_token(&token).is_ok());

        let profile = dir.path().join("staff.json");
        let text = "{\"profile_name\": \"Staff\",\n \"is_supervised\": true}\n";
        std::fs::write(&profile, text).expect("write");
        assert_eq!(read_profile(&profile).expect("profile"), text.as_bytes());
        std::fs::write(
            &profile,
            "{\"profile_name\": \"Staff\",\n \"is_supervised\": tru}",
        )
        .expect("write");
        let err = read_profile(&profile).expect_err("syntax");
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&profile, "[1, 2]").expect("write");
        let err = read_profile(&profile).expect_err("array");
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn rules_send_the_whole_rule() {
        let set = AbmRuleSet {
            name: "north".into(),
            rule: "ipads".into(),
            profile: "carts".into(),
            priority: Some(-5),
            serials: Vec::new(),
            serials_file: None,
            family: Some("iPad".into()),
            model: Some(" iPad Air ".into()),
            os: None,
        };
        assert_eq!(
            rule_request(&set).expect("body"),
            json!({"profile": "carts", "priority": -5, "serials": [], "device_family": "iPad",
                   "model": "iPad Air", "os": null})
        );
        let nothing = AbmRuleSet {
            family: Some("  ".into()),
            model: None,
            ..set
        };
        let err = rule_request(&nothing).expect_err("matches nothing");
        assert!(err.to_string().contains("would match no device"), "{err}");
    }

    #[test]
    fn per_serial_failures_set_the_exit_code() {
        let all_good = json!({"items": [{"serial": "A1", "outcome": "SUCCESS", "reason": null},
                                        {"serial": "B2", "outcome": "PENDING", "reason": "queued"}]});
        let out = per_serial(&all_good, false, ASSIGN_OK, "not assigned");
        assert!(out.error.is_none());
        assert!(out.stdout.starts_with("SERIAL  OUTCOME"), "{}", out.stdout);

        let out = per_serial(&all_good, true, DONE_OK, "still have their profile");
        let err = out.error.expect("PENDING is not done");
        assert_eq!(
            err.stderr_line(),
            "error ABM_DEVICES_FAILED: 1 of 2 devices still have their profile: B2 PENDING"
        );
        assert_eq!(err.exit_code(), 1);
        assert!(out.stdout.starts_with("{\n"), "{}", out.stdout);

        let items: Vec<Value> = (0..12)
            .map(|i| json!({"serial": format!("S{i}"), "outcome": "FAILED"}))
            .collect();
        let out = per_serial(&json!({ "items": items }), false, ASSIGN_OK, "not assigned");
        let line = out.error.expect("failed").stderr_line();
        assert!(
            line.contains("12 of 12 devices not assigned: S0 FAILED"),
            "{line}"
        );
        assert!(line.ends_with("S9 FAILED and 2 more"), "{line}");
    }

    #[test]
    fn a_failed_run_is_an_error() {
        let ok = json!({"result": "ok", "error": null});
        assert!(failed_run(&ok).is_none());
        let failed = json!({"result": "failed",
                            "error": {"code": "ABM_TERMS_NOT_SIGNED", "message": "accept"}});
        assert_eq!(
            failed_run(&failed).expect("error").stderr_line(),
            "error ABM_TERMS_NOT_SIGNED: accept"
        );
        let odd = json!({});
        assert!(failed_run(&odd)
            .expect("error")
            .stderr_line()
            .starts_with("error ABM_SYNC_FAILED: "));
    }
}
