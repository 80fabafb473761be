//! Running `mdmctl users ...`: local checks, the password (read before anything is sent,
//! from the terminal or standard input, never from an argument), the calls to
//! `/api/v1/users`, and what is printed.
//!
//! The appliance owns the rules for usernames, names, emails and passwords and names the
//! field it refuses; only what would waste a typed password (an empty name, an empty
//! `--email`) is checked here first.

use http::Method;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::{get, list_pages, segment, send, Output, Query};
use crate::cli::users::{PasswordArgs, UserAdd, UserSet, UsersCommand};
use crate::client::{ApiClient, RequestBody};
use crate::error::CliError;
use crate::password;
use crate::render::lifecycle::shown_of;
use crate::render::users as render;
use crate::table::clean;

/// The refusal of `--password VALUE`. It does not repeat the value: it may be a password.
const PASSWORD_VALUE_REFUSED: &str =
    "--password takes no value: a password given as an argument stays in shell history and \
     shows in `ps`, so the value was not used (and is not repeated here); give --password \
     alone to be asked for it, or pipe it in with --password-stdin. (If that value was the \
     username, put it before --password.)";

/// `/users/USER`.
fn user_path(user: &str) -> Result<String, CliError> {
    Ok(format!("/users/{}", segment(user, "username")?))
}

/// The `username` of an answer, for messages; the name as typed if the answer has none.
fn username_of(v: &Value, typed: &str) -> String {
    clean(
        v.get("username")
            .and_then(Value::as_str)
            .unwrap_or(typed.trim()),
    )
}

/// Runs a `users` subcommand.
pub async fn users(
    client: &mut ApiClient,
    command: &UsersCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        UsersCommand::List { limit, after, all } => {
            let page = list_pages(
                client,
                "/users",
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
            let mut out = Output::text(render::users(&page.items)).note(shown_of(
                page.items.len(),
                page.total,
                "user accounts",
            ));
            if let Some(next) = page.next {
                out = out.note(format!(
                    "more user accounts follow: add --after {} (or --all)",
                    clean(&next)
                ));
            }
            Ok(out)
        }
        UsersCommand::Show { user } => {
            let v = get(client, &user_path(user)?).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let note = render::state_note(&v, &username_of(&v, user));
            Ok(Output::text(render::user(&v)).notes(note))
        }
        UsersCommand::Add(args) => add(client, args, json).await,
        UsersCommand::Set(args) => set(client, args, json).await,
        UsersCommand::Remove { user } => {
            let v = send(
                client,
                Method::DELETE,
                &user_path(user)?,
                RequestBody::Empty,
            )
            .await?;
            if json {
                return Ok(Output::json(&v));
            }
            let deleted = v
                .get("deleted")
                .and_then(Value::as_str)
                .unwrap_or(user.trim());
            Ok(
                Output::line(&format!("deleted user account {}", clean(deleted)))
                    .note("devices enrolled for it keep its name"),
            )
        }
        UsersCommand::Unlock { user } => {
            let path = format!("{}/unlock", user_path(user)?);
            let v = send(client, Method::POST, &path, RequestBody::Empty).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let name = username_of(&v, user);
            Ok(Output::line(&format!(
                "unlocked user account {name}; its failed sign-ins are cleared"
            ))
            .notes(render::state_note(&v, &name)))
        }
    }
}

/// The password for `add` (`required`) or `set`; `None` when `set` leaves it alone.
fn password_for(
    args: &PasswordArgs,
    username: &str,
    required: bool,
) -> Result<Option<Zeroizing<String>>, CliError> {
    if args.value_given() {
        return Err(CliError::Usage(PASSWORD_VALUE_REFUSED.into()));
    }
    if args.password_stdin {
        return password::from_stdin(&password::PASSWORD).map(Some);
    }
    if args.prompt() || required {
        return password::new_password(username).map(Some);
    }
    Ok(None)
}

/// A `--name` value, trimmed; refused when empty, before a password is typed for nothing.
fn full_name(name: &str) -> Result<&str, CliError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::Usage(
            "--name needs the person's full name, not an empty value".into(),
        ));
    }
    Ok(name)
}

/// An `--email` value, trimmed; `instead` says what to do rather than give an empty one.
fn email<'a>(email: &'a str, instead: &str) -> Result<&'a str, CliError> {
    let email = email.trim();
    if email.is_empty() {
        return Err(CliError::Usage(format!(
            "--email needs an address, not an empty value; {instead}"
        )));
    }
    Ok(email)
}

/// The body of `users add`, without the password.
fn add_request(args: &UserAdd) -> Result<Map<String, Value>, CliError> {
    let username = args.username.trim();
    if username.is_empty() {
        return Err(CliError::Usage("the username must not be empty".into()));
    }
    let mut body = Map::new();
    body.insert("username".into(), json!(username));
    body.insert("full_name".into(), json!(full_name(&args.name)?));
    if let Some(e) = &args.email {
        body.insert(
            "email".into(),
            json!(email(e, "leave it out for an account without one")?),
        );
    }
    Ok(body)
}

/// The body of `users set`, without the password: only what changes.
fn set_request(args: &UserSet) -> Result<Map<String, Value>, CliError> {
    let mut body = Map::new();
    if let Some(name) = &args.name {
        body.insert("full_name".into(), json!(full_name(name)?));
    }
    if let Some(e) = &args.email {
        body.insert(
            "email".into(),
            json!(email(e, "use --no-email to remove it")?),
        );
    }
    if args.no_email {
        // The API's way of removing the address.
        body.insert("email".into(), json!(""));
    }
    if args.disable {
        body.insert("disabled".into(), json!(true));
    }
    if args.enable {
        body.insert("disabled".into(), json!(false));
    }
    Ok(body)
}

/// Sends `body` with the password added, if any. The JSON copy of the password the client
/// builds is not wiped; the `Zeroizing` original is, when it goes out of scope.
async fn send_with_password(
    client: &mut ApiClient,
    method: Method,
    path: &str,
    mut body: Map<String, Value>,
    password: Option<&Zeroizing<String>>,
) -> Result<Value, CliError> {
    if let Some(p) = password {
        body.insert("password".into(), json!(p.as_str()));
    }
    send(client, method, path, RequestBody::Json(Value::Object(body))).await
}

async fn add(client: &mut ApiClient, args: &UserAdd, json: bool) -> Result<Output, CliError> {
    let body = add_request(args)?;
    let password = password_for(&args.password, &args.username, true)?;
    let v = send_with_password(client, Method::POST, "/users", body, password.as_ref()).await?;
    drop(password);
    if json {
        return Ok(Output::json(&v));
    }
    let name = username_of(&v, &args.username);
    Ok(Output::text(render::user(&v)).note(format!(
        "user account {name} created; it signs in during Setup Assistant on devices whose \
         ABM enrollment profile has \"authentication\": \"local\""
    )))
}

async fn set(client: &mut ApiClient, args: &UserSet, json: bool) -> Result<Output, CliError> {
    let path = user_path(&args.user)?;
    let body = set_request(args)?;
    let password = password_for(&args.password, &args.user, false)?;
    let new_password = password.is_some();
    let v = send_with_password(client, Method::PATCH, &path, body, password.as_ref()).await?;
    drop(password);
    if json {
        return Ok(Output::json(&v));
    }
    let name = username_of(&v, &args.user);
    let mut out = Output::text(render::user(&v)).note(if new_password {
        format!(
            "user account {name} changed; its password was replaced, which also clears failed \
             sign-ins and any lockout"
        )
    } else {
        format!("user account {name} changed")
    });
    if !args.disable {
        out = out.notes(render::state_note(&v, &name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::users::PasswordValueGiven;

    fn no_password() -> PasswordArgs {
        PasswordArgs {
            password: None,
            password_stdin: false,
        }
    }

    fn add_args(email: Option<&str>) -> UserAdd {
        UserAdd {
            username: " Ada ".into(),
            name: " Ada Lovelace ".into(),
            email: email.map(str::to_owned),
            password: no_password(),
        }
    }

    fn set_args() -> UserSet {
        UserSet {
            user: "ada".into(),
            name: None,
            email: None,
            no_email: false,
            password: no_password(),
            disable: false,
            enable: false,
        }
    }

    #[test]
    fn add_sends_the_trimmed_fields() {
        assert_eq!(
            Value::Object(add_request(&add_args(None)).expect("body")),
            json!({"username": "Ada", "full_name": "Ada Lovelace"})
        );
        assert_eq!(
            Value::Object(add_request(&add_args(Some(" ada@example.org "))).expect("body")),
            json!({"username": "Ada", "full_name": "Ada Lovelace", "email": "ada@example.org"})
        );
        let err = add_request(&add_args(Some(" "))).expect_err("empty email");
        assert!(err.to_string().contains("leave it out"), "{err}");
        let blank_name = UserAdd {
            name: "  ".into(),
            ..add_args(None)
        };
        assert!(matches!(add_request(&blank_name), Err(CliError::Usage(_))));
        let blank_user = UserAdd {
            username: " ".into(),
            ..add_args(None)
        };
        assert!(matches!(add_request(&blank_user), Err(CliError::Usage(_))));
    }

    #[test]
    fn set_sends_only_what_changes() {
        let rename = UserSet {
            name: Some(" Ada King ".into()),
            enable: true,
            ..set_args()
        };
        assert_eq!(
            Value::Object(set_request(&rename).expect("body")),
            json!({"full_name": "Ada King", "disabled": false})
        );
        let no_email = UserSet {
            no_email: true,
            disable: true,
            ..set_args()
        };
        assert_eq!(
            Value::Object(set_request(&no_email).expect("body")),
            json!({"email": "", "disabled": true})
        );
        let empty = UserSet {
            email: Some(String::new()),
            ..set_args()
        };
        let err = set_request(&empty).expect_err("empty email");
        assert!(err.to_string().contains("--no-email"), "{err}");
        assert!(set_request(&set_args()).expect("nothing").is_empty());
    }

    #[test]
    fn a_password_value_is_refused_before_anything_is_read() {
        let given = PasswordArgs {
            password: Some(Some(PasswordValueGiven)),
            password_stdin: false,
        };
        for required in [true, false] {
            let err = password_for(&given, "ada", required).expect_err("value");
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().starts_with("--password takes no value"),
                "{err}"
            );
        }
        assert!(password_for(&no_password(), "ada", false)
            .expect("nothing to read")
            .is_none());
    }

    #[test]
    fn paths_encode_the_username() {
        assert_eq!(
            user_path(" ada@example ").expect("path"),
            "/users/ada@example"
        );
        assert_eq!(user_path("a b").expect("path"), "/users/a%20b");
        assert!(matches!(user_path(" "), Err(CliError::Usage(_))));
        assert_eq!(username_of(&json!({"username": "ada"}), "ADA"), "ada");
        assert_eq!(username_of(&json!({}), " ADA "), "ADA");
    }
}
