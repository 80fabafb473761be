//! Nothing acknowledged is lost: across graceful restarts and across `kill -9` of the daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use appliance_tests::{Appliance, DaemonProcess};
use mdm_sim::commands::CommandStatus;
use serde_json::json;

#[tokio::test]
async fn restart_mid_queue_loses_nothing() {
    let mut app = Appliance::start().await;
    let mut d = app.enroll_manual().await;
    let uuids = [
        app.send(&d.udid, "DeviceInformation").await,
        app.send(&d.udid, "SecurityInfo").await,
        app.send(&d.udid, "ProfileList").await,
    ];
    // The device answers the first command, receives the second and is cut off before
    // answering it.
    d.commands.max_commands = 1;
    assert!(d.run_until_idle().await.is_err());
    assert_eq!(
        app.command(&uuids[0]).await["deliveries"][0]["status"],
        "Acknowledged"
    );

    app.restart().await;
    d.disconnect().await;
    d.commands.max_commands = 100;
    let done = d.run_until_idle().await.unwrap();
    assert_eq!(
        done.iter()
            .map(|c| c.command_uuid.as_str())
            .collect::<Vec<_>>(),
        [&uuids[1], &uuids[2]]
    );
    for u in &uuids {
        assert_eq!(
            app.command(u).await["deliveries"][0]["status"],
            "Acknowledged",
            "{u}"
        );
    }
    // The enrollment, the CA and the admin token all survived too.
    assert_eq!(app.enrollment(&d.udid).await.1["state"], "Enrolled");
}

#[tokio::test]
async fn kill_9_keeps_every_acknowledged_write() {
    let mut app = Appliance::start().await;
    let mut devices = vec![app.enroll_manual().await, app.enroll_manual().await];
    app.stop().await;

    let daemon = DaemonProcess::start(&app.data_dir(), app.addr, &app.apple_root());
    app.reconnect_admin();
    // Concurrent enqueues: each 201 is a promise that the command is on disk.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let udid = devices[i % 2].udid.clone();
        let app = &app;
        tasks.push(async move {
            let (s, v) = app
                .api(
                    "POST",
                    "/api/v1/commands",
                    Some(json!({"targets": [udid], "request_type": "ProfileList"})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            v["command_uuid"].as_str().unwrap().to_string()
        });
    }
    let mut uuids = Vec::new();
    for t in tasks {
        uuids.push(t.await);
    }
    // One device answers everything; each answer was acknowledged with the next command.
    devices[0].disconnect().await;
    let answered = devices[0].run_until_idle().await.unwrap();
    assert_eq!(answered.len(), 12);
    daemon.kill9();

    let _daemon = DaemonProcess::start(&app.data_dir(), app.addr, &app.apple_root());
    app.reconnect_admin();
    for p in &answered {
        assert_eq!(
            app.command(&p.command_uuid).await["deliveries"][0]["status"],
            "Acknowledged"
        );
    }
    for d in &mut devices {
        d.disconnect().await;
    }
    let rest = devices[1].run_until_idle().await.unwrap();
    assert_eq!(rest.len(), 12, "every acknowledged enqueue survived");
    assert!(rest.iter().all(|c| c.status == CommandStatus::Acknowledged));
    let mut all: Vec<String> = answered
        .iter()
        .chain(&rest)
        .map(|c| c.command_uuid.clone())
        .collect();
    all.sort();
    uuids.sort();
    assert_eq!(all, uuids);
}
