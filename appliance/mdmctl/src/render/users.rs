//! Text for humans for `mdmctl users ...`.
//!
//! An account's state is one word (or phrase) in tables: `active`, `disabled`, or `locked
//! until T`. The appliance decides whether a lockout is still running (`locked`), so the
//! CLI needs no clock and agrees with what a device would see. Like the other renderers
//! these read the JSON loosely: a missing field shows as `-`.

use serde_json::Value;

use super::{at, text, time_text, NONE};
use crate::table::{clean, key_values, Table};

fn flag(v: &Value, key: &str) -> bool {
    at(v, &[key]).and_then(Value::as_bool).unwrap_or(false)
}

/// Whether the account can sign in now, in a few words. A disabled account is shown as
/// disabled even while also locked: unlocking it would not let it sign in.
pub fn state(u: &Value) -> String {
    if flag(u, "disabled") {
        "disabled".to_owned()
    } else if flag(u, "locked") {
        match time_text(u, &["locked_until"]) {
            until if until == NONE => "locked".to_owned(),
            until => format!("locked until {until}"),
        }
    } else {
        "active".to_owned()
    }
}

/// `mdmctl users list`.
pub fn users(list: &[Value]) -> String {
    let mut t = Table::new(&["USERNAME", "NAME", "EMAIL", "STATE", "LAST SIGN-IN"]);
    for u in list {
        t.push([
            text(u, &["username"]),
            text(u, &["full_name"]),
            text(u, &["email"]),
            state(u),
            time_text(u, &["last_sign_in_at"]),
        ]);
    }
    t.render()
}

/// `mdmctl users show` (and the answer of `add`, `set` and `unlock`).
pub fn user(u: &Value) -> String {
    let mut state = state(u);
    if flag(u, "disabled") && flag(u, "locked") {
        state.push_str(&format!(
            " (and locked until {})",
            time_text(u, &["locked_until"])
        ));
    }
    key_values(&[
        ("Username", text(u, &["username"])),
        ("Name", text(u, &["full_name"])),
        ("Email", text(u, &["email"])),
        ("Source", text(u, &["source"])),
        ("State", state),
        ("Failed sign-ins", text(u, &["failed_sign_ins"])),
        ("Last sign-in", time_text(u, &["last_sign_in_at"])),
        (
            "Created",
            format!(
                "{} by {}",
                time_text(u, &["created_at"]),
                text(u, &["created_by"])
            ),
        ),
        ("Updated", time_text(u, &["updated_at"])),
    ])
}

/// The stderr note under `users show` for an account that cannot sign in, saying what
/// would let it.
pub fn state_note(u: &Value, username: &str) -> Option<String> {
    let user = clean(username);
    if flag(u, "disabled") {
        Some(format!(
            "the account cannot sign in while disabled: `mdmctl users set {user} --enable`"
        ))
    } else if flag(u, "locked") {
        Some(format!(
            "sign-ins are refused after repeated failures until the lockout ends: \
             `mdmctl users unlock {user}` lifts it now"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(username: &str) -> Value {
        json!({"username": username, "full_name": "Ada Lovelace", "email": "ada@example.org",
               "source": "local", "disabled": false, "locked": false, "locked_until": null,
               "failed_sign_ins": 0, "last_sign_in_at": "2024-05-01T10:00:00.250Z",
               "created_at": "2024-04-01T08:00:00Z", "updated_at": "2024-04-02T08:00:00Z",
               "created_by": "admin"})
    }

    #[test]
    fn the_state_says_why_an_account_cannot_sign_in() {
        let mut u = account("ada");
        assert_eq!(state(&u), "active");
        u["locked"] = json!(true);
        u["locked_until"] = json!("2024-05-01T10:15:00.000Z");
        assert_eq!(state(&u), "locked until 2024-05-01T10:15:00Z");
        u["locked_until"] = Value::Null;
        assert_eq!(state(&u), "locked");
        u["disabled"] = json!(true);
        assert_eq!(state(&u), "disabled");
        // A lockout that has ended is the appliance's call, not the CLI's clock.
        let mut ended = account("ada");
        ended["locked_until"] = json!("2024-05-01T10:15:00Z");
        assert_eq!(state(&ended), "active");
    }

    #[test]
    fn the_table_has_one_row_per_account() {
        let mut bob = account("bob");
        bob["full_name"] = json!("Bob\u{1b}[2J Byte");
        bob["email"] = Value::Null;
        bob["last_sign_in_at"] = Value::Null;
        bob["locked"] = json!(true);
        bob["locked_until"] = json!("2024-05-01T10:15:00Z");
        assert_eq!(
            users(&[account("ada"), bob]),
            "USERNAME  NAME          EMAIL            STATE                              LAST SIGN-IN\n\
             ada       Ada Lovelace  ada@example.org  active                             2024-05-01T10:00:00Z\n\
             bob       Bob\u{FFFD}[2J Byte  -                locked until 2024-05-01T10:15:00Z  -\n"
        );
        assert_eq!(users(&[]), "USERNAME  NAME  EMAIL  STATE  LAST SIGN-IN\n");
    }

    #[test]
    fn the_detail_shows_every_field_but_secrets() {
        assert_eq!(
            user(&account("ada")),
            "Username         ada\n\
             Name             Ada Lovelace\n\
             Email            ada@example.org\n\
             Source           local\n\
             State            active\n\
             Failed sign-ins  0\n\
             Last sign-in     2024-05-01T10:00:00Z\n\
             Created          2024-04-01T08:00:00Z by admin\n\
             Updated          2024-04-02T08:00:00Z\n"
        );
        let mut u = account("ada");
        u["disabled"] = json!(true);
        u["locked"] = json!(true);
        u["locked_until"] = json!("2024-05-01T10:15:00Z");
        u["failed_sign_ins"] = json!(5);
        let out = user(&u);
        assert!(
            out.contains("State            disabled (and locked until 2024-05-01T10:15:00Z)\n"),
            "{out}"
        );
        assert!(out.contains("Failed sign-ins  5\n"), "{out}");
    }

    #[test]
    fn notes_say_how_to_let_the_account_sign_in_again() {
        assert_eq!(state_note(&account("ada"), "ada"), None);
        let mut u = account("ada");
        u["locked"] = json!(true);
        assert!(state_note(&u, "ada")
            .expect("note")
            .ends_with("`mdmctl users unlock ada` lifts it now"));
        u["disabled"] = json!(true);
        assert_eq!(
            state_note(&u, "ada").expect("note"),
            "the account cannot sign in while disabled: `mdmctl users set ada --enable`"
        );
    }
}
