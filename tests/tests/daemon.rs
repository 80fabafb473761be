//! The daemon binary's contract with systemd: readiness notification, SIGTERM, socket
//! activation, and configuration errors; and the allocator the binary is built with.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance_tests::{free_port, mdmd_binary};

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "mdmd did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim_end().to_owned()
        })
        .collect()
}

#[test]
fn notifies_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let mut child = Command::new(mdmd_binary())
        .args([
            "serve",
            "--dev",
            "--log-format",
            "text",
            "--apns-url",
            appliance_tests::NO_APNS,
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The binary allocates through jemalloc with the settings compiled into it: its
    // background threads, which return freed pages while the daemon is idle, are running.
    let threads = thread_names(child.id());
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "no jemalloc background thread among {threads:?}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
}

#[test]
fn serves_on_a_socket_passed_by_systemd() {
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The daemon is told to bind another port: with LISTEN_FDS it must use the passed socket.
    let unused = free_port();
    let mut child = Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg(mdmd_binary())
        .args([
            "serve",
            "--dev",
            "--log-format",
            "text",
            "--apns-url",
            appliance_tests::NO_APNS,
            "--listen",
        ])
        .arg(format!("127.0.0.1:{unused}"))
        .arg("--base-url")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // systemd-socket-activate starts the daemon on the first connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr_file = dir.path().join("data").join(mdmd::LISTEN_ADDR_FILE);
    let _first = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("systemd-socket-activate never listened: {e}"),
        }
    };
    while !addr_file.exists() {
        assert!(Instant::now() < deadline, "the daemon never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let addrs = std::fs::read_to_string(&addr_file).unwrap();
    assert_eq!(addrs.trim(), format!("127.0.0.1:{port}"));
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "TLS on the passed socket"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", unused)).is_err());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_exit(&mut child, Duration::from_secs(30));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.exists())
        })
        .ok_or(())
}

#[test]
fn configuration_errors_name_the_key_and_fail_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mdmd.toml");
    std::fs::write(
        &cfg,
        "version = 1\ndevelopment = true\n[server]\nbase_url = \"https://mdm.example.lan\"\nlistn = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = Command::new(mdmd_binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listn"), "{err}");

    std::fs::write(
        &cfg,
        "version = 1\n[server]\nbase_url = \"https://mdm.example.lan\"\n",
    )
    .unwrap();
    let out = Command::new(mdmd_binary())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The TPM keystore is the production default: a TPM that cannot be reached fails the start
    // with a message naming the TPM.
    let out = Command::new(mdmd_binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tcti",
            "swtpm:host=127.0.0.1,port=9",
        ])
        .args(["--apns-url", appliance_tests::NO_APNS])
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TPM"), "{err}");

    std::fs::write(
        &cfg,
        "version = 1\ndevelopment = true\n[server]\nbase_url = \"https://mdm.example.lan\"\n[keystore]\nbackend = \"software\"\n",
    )
    .unwrap();
    let out = Command::new(mdmd_binary())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
