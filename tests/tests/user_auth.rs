//! User authentication during Setup Assistant, end to end: local accounts through the admin
//! API, an ABM enrollment profile asking for sign-in, the `configuration_web_url` page as the
//! device's web view shows it, the enrollment linked to the account, lockout and unlock,
//! disabled accounts, staging enrollment without a user, and no password or hash on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use appliance_tests::{ade_device_builder, Appliance};
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ServerId};
use mdm_sim::device::SimDevice;
use mdm_sim::webview::{first_form, visible_text, WebView};
use serde_json::{json, Value};

const SERVER: ServerId = ServerId(0);
const PASSWORD: &str = "Correct-Horse-42";

fn page(view: &WebView) -> (u16, &str) {
    match view {
        WebView::Page { status, html } => (*status, html.as_str()),
        WebView::Profile(_) => panic!("expected a page, got a profile"),
    }
}

async fn activity(app: &Appliance, kind: &str) -> Vec<Value> {
    let (st, v) = app
        .api(
            "GET",
            &format!("/api/v1/activity?type={kind}&limit=100"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// Submits the sign-in form of `html` (the page `d` was shown) with these credentials.
async fn submit(
    app: &Appliance,
    d: &mut SimDevice,
    html: &str,
    username: &str,
    password: &str,
) -> WebView {
    let url = format!("{}/mdm/enroll", app.base_url);
    d.web_submit(
        &app.admin,
        &url,
        html,
        &[("username", username), ("password", password)],
    )
    .await
    .unwrap()
}

/// Opens the page for `d` and submits the form with these credentials.
async fn sign_in(app: &Appliance, d: &mut SimDevice, username: &str, password: &str) -> WebView {
    let url = format!("{}/mdm/enroll", app.base_url);
    let view = d.ade_web_open(&app.admin, &url, &app.apple).await.unwrap();
    let (status, html) = page(&view);
    assert_eq!(status, 200, "{html}");
    let html = html.to_string();
    submit(app, d, &html, username, password).await
}

async fn install_and_enroll(app: &Appliance, d: &mut SimDevice, view: WebView) {
    let WebView::Profile(profile) = view else {
        panic!("expected the enrollment profile, got {view:?}");
    };
    app.install_enrollment(d, &profile).await;
}

#[tokio::test]
async fn setup_assistant_sign_in_links_the_device_to_its_user() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 3).unwrap();
    let app = Appliance::start().await;
    app.connect_abm(&sim, "north", SERVER).await;

    // Accounts: validation names the field, names are case-insensitive, no hash is shown.
    let bad = [
        (
            json!({"username": "alice", "full_name": "A", "password": "short"}),
            "PASSWORD_POLICY",
            "password",
        ),
        (
            json!({"username": "al ice", "full_name": "A", "password": PASSWORD}),
            "USER_INVALID",
            "username",
        ),
        (
            json!({"username": "alice", "full_name": "A", "email": "nope", "password": PASSWORD}),
            "USER_INVALID",
            "email",
        ),
        (
            json!({"username": "alice", "full_name": "A", "password": PASSWORD, "role": "x"}),
            "INVALID_JSON",
            "role",
        ),
    ];
    for (body, code, field) in bad {
        let (st, e) = app.api("POST", "/api/v1/users", Some(body)).await;
        assert_eq!(st, 400, "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{e}"
        );
    }
    let (st, u) = app
        .api(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "Alice", "full_name": "Alice Example",
                        "email": "alice@example.org", "password": PASSWORD})),
        )
        .await;
    assert_eq!(st, 201, "{u}");
    assert_eq!(u["username"], "alice");
    assert_eq!(u["locked"], false);
    assert!(!u.to_string().to_lowercase().contains("password"), "{u}");
    let (st, e) = app
        .api(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "ALICE", "full_name": "B", "password": PASSWORD})),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "USER_EXISTS");
    let op = app.new_token("helpdesk", "Operator").await;
    let (st, _) = app
        .api_as(
            &op,
            "POST",
            "/api/v1/users",
            json!({"username": "bob", "full_name": "Bob", "password": PASSWORD})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(st, 403, "creating accounts needs admin");
    let (st, list) = app.api("GET", "/api/v1/users", None).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["total"], 1);

    // Profiles: `authentication` is the appliance's option; it needs the appliance's page.
    let (st, e) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/bad",
            Some(json!({"profile_name": "Bad", "authentication": "ldap"})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("authentication"));
    let (st, e) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/bad",
            Some(json!({"profile_name": "Bad", "authentication": "local",
                        "configuration_web_url": "https://elsewhere.example.org/enroll"})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("configuration_web_url"));
    let (st, p) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/staff",
            Some(json!({"profile_name": "Staff", "authentication": "local"})),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["authentication"], "local");
    assert!(p["profile"].get("authentication").is_none(), "{p}");
    let (st, p) = app
        .api(
            "PUT",
            "/api/v1/abm/north/profiles/kiosk",
            Some(json!({"profile_name": "Kiosk"})),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["authentication"], "none");
    for (profile, serials) in [
        ("staff", vec![serials[0].clone(), serials[1].clone()]),
        ("kiosk", vec![serials[2].clone()]),
    ] {
        let (st, v) = app
            .api(
                "POST",
                &format!("/api/v1/abm/north/profiles/{profile}/assign"),
                Some(json!({ "serials": serials })),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = app.api("POST", "/api/v1/abm/north/sync", None).await;
    assert_eq!(st, 200, "{v}");

    // A device whose profile asks for sign-in cannot skip it by POSTing MachineInfo.
    let mut d0 = ade_device_builder(&sim, &serials[0]).build();
    let refused = app.ade_profile(&mut d0).await.unwrap_err();
    assert!(format!("{refused}").contains("403"), "{refused}");

    // The page: a form with a hidden token, served with a strict policy.
    let url = format!("{}/mdm/enroll", app.base_url);
    let view = d0.ade_web_open(&app.admin, &url, &app.apple).await.unwrap();
    let (status, html) = page(&view);
    assert_eq!(status, 200);
    let html = html.to_string();
    let form = first_form(&html).unwrap();
    assert_eq!(form.method, "post");
    assert!(form
        .inputs
        .iter()
        .any(|i| i.name == "session" && i.kind == "hidden" && i.value.len() >= 40));
    assert!(visible_text(&html).contains(&serials[0]));

    // A wrong password: the page again, saying so, still usable.
    let view = submit(&app, &mut d0, &html, "alice", "Wrong-Horse-42").await;
    let (status, again) = page(&view);
    assert_eq!(status, 401);
    assert!(visible_text(again).contains("not correct"), "{again}");
    let again = again.to_string();
    // An unknown account reads exactly the same.
    let view = submit(&app, &mut d0, &again, "mallory", PASSWORD).await;
    let (status, unknown) = page(&view);
    assert_eq!(status, 401);
    assert_eq!(
        visible_text(unknown).replace(&serials[0], ""),
        visible_text(&again).replace(&serials[0], "")
    );

    // The right password (any case of the name): the profile, and the device is Alice's.
    let view = submit(&app, &mut d0, &html, "ALICE", PASSWORD).await;
    install_and_enroll(&app, &mut d0, view).await;
    let v = app.device_view(&serials[0]).await;
    assert_eq!(v["user"]["username"], "alice", "{v}");
    assert_eq!(v["user"]["full_name"], "Alice Example");
    assert_eq!(v["user"]["email"], "alice@example.org");
    assert_eq!(v["enrollment"]["source"]["Ade"]["user"], "alice", "{v}");
    // The used page cannot enroll another device.
    let view = submit(&app, &mut d0, &html, "alice", PASSWORD).await;
    let (status, gone) = page(&view);
    assert_eq!(status, 410);
    assert!(first_form(gone).is_none());
    let (_, u) = app.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(u["failed_sign_ins"], 0, "a success resets the count: {u}");
    assert!(u["last_sign_in_at"].is_string());

    // Every sign-in is in the activity log, with the device; the unknown name is not.
    let entries = activity(&app, "auth.sign_in").await;
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "ok").count(),
        1,
        "{entries:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| **o == "failed").count(), 2);
    assert!(entries.iter().all(|e| e["targets"]
        .as_array()
        .unwrap()
        .contains(&json!(serials[0]))));
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("mallory") && !text.contains(PASSWORD),
        "{text}"
    );

    // Lockout: five failures in a row lock the account, even for the right password.
    let mut d1 = ade_device_builder(&sim, &serials[1]).build();
    let open = d1.ade_web_open(&app.admin, &url, &app.apple).await.unwrap();
    let mut html = page(&open).1.to_string();
    for i in 1..=5 {
        let view = submit(&app, &mut d1, &html, "alice", "Wrong-Horse-42").await;
        let (status, next) = page(&view);
        assert_eq!(status, if i < 5 { 401 } else { 403 }, "attempt {i}");
        html = next.to_string();
    }
    assert!(visible_text(&html).contains("locked"), "{html}");
    let view = submit(&app, &mut d1, &html, "alice", PASSWORD).await;
    assert_eq!(page(&view).0, 403);
    let (_, u) = app.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(u["locked"], true, "{u}");
    assert_eq!(activity(&app, "auth.locked").await.len(), 1);
    // The help desk unlocks it; an admin disables it; the right password is then refused
    // with its own message; enabled again, the sign-in works.
    let (st, u) = app
        .api_as(&op, "POST", "/api/v1/users/alice/unlock", Vec::new())
        .await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["locked"], false);
    let (st, _) = app
        .api(
            "PATCH",
            "/api/v1/users/alice",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(st, 200);
    let view = sign_in(&app, &mut d1, "alice", PASSWORD).await;
    let (status, html) = page(&view);
    assert_eq!(status, 403);
    assert!(visible_text(html).contains("disabled"), "{html}");
    let (st, _) = app
        .api(
            "PATCH",
            "/api/v1/users/alice",
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(st, 200);
    let view = sign_in(&app, &mut d1, "alice", PASSWORD).await;
    install_and_enroll(&app, &mut d1, view).await;
    assert_eq!(
        app.device_view(&serials[1]).await["user"]["username"],
        "alice"
    );

    // A profile without authentication: staging, the profile at once, no user.
    let mut d2 = ade_device_builder(&sim, &serials[2]).build();
    let view = d2.ade_web_open(&app.admin, &url, &app.apple).await.unwrap();
    install_and_enroll(&app, &mut d2, view).await;
    assert!(app.device_view(&serials[2]).await["user"].is_null());

    // Neither the password nor its hash is readable in the database file.
    let db = std::fs::read(app.data_dir().join("mdm.redb")).unwrap();
    for needle in [PASSWORD.as_bytes(), b"$argon2id$"] {
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "{} found in the redb file",
            String::from_utf8_lossy(needle)
        );
    }

    // Deleting the account keeps the name on the enrollment.
    let (st, _) = app.api("DELETE", "/api/v1/users/alice", None).await;
    assert_eq!(st, 200);
    let v = app.device_view(&serials[0]).await;
    assert_eq!(v["user"]["username"], "alice");
    assert_eq!(v["user"]["account_exists"], false);
    let (st, e) = app.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], "USER_NOT_FOUND");
}
