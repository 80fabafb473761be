//! Test kit for end-to-end tests: starts the real daemon (in this process, or as a child
//! process for crash tests) on 127.0.0.1 in a temporary data directory, and talks to it over
//! real HTTPS, as an admin (the JSON API) and as devices (`mdm-sim`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mdm_sim::abm::{AbmSimulator, ContentCipher, ServerId, TokenOptions};
use mdm_sim::apple::AppleStandIn;
use mdm_sim::device::{DeviceKind, SimDevice, SimDeviceBuilder};
use mdm_sim::error::DeviceError;
use mdm_sim::http::{headers, HttpClient, HttpResponse};
use mdmd::config::Config;
use serde_json::{json, Value};

/// A push service address where nothing listens (loopback, discard port): pushes fail fast.
pub const NO_APNS: &str = "https://127.0.0.1:9";

/// The push topic every test appliance gets.
pub const TOPIC: &str = "com.apple.mgmt.External.3c2d3f64-5b1e-4f8e-9a63-0d1f6a2b7c11";

/// A daemon under test.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub base_url: String,
    pub ca_pem: Vec<u8>,
    pub token: String,
    pub apple: AppleStandIn,
    pub admin: HttpClient,
    running: Option<mdmd::Running>,
    tweak: Tweak,
}

/// A change to the daemon's configuration, reapplied on restart.
pub type Tweak = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Pick a free port on 127.0.0.1 (bind, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, addr: SocketAddr, apple_root: PathBuf, tweak: &Tweak) -> Config {
    let mut cfg = Config::development(addr, dir.join("data"));
    cfg.ade.device_ca_roots = vec![apple_root];
    cfg.limits.drain_timeout_seconds = 5;
    // Never Apple's push service from a test: a closed loopback port unless a test points
    // the pusher at its APNs simulator.
    cfg.apns.url = NO_APNS.to_string();
    // Nor Apple Business Manager: connections created by tests name their simulator.
    cfg.abm.url = NO_APNS.to_string();
    tweak(&mut cfg);
    cfg
}

impl Appliance {
    /// Start with development defaults, trusting a fresh stand-in Apple device CA for ADE, and
    /// with a push certificate imported (profiles need its topic).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`start`](Self::start), changing the configuration first.
    pub async fn start_with(tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        let tweak: Tweak = std::sync::Arc::new(tweak);
        let dir = tempfile::tempdir().unwrap();
        let apple = AppleStandIn::generate().unwrap();
        apple.save(&dir.path().join("apple")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = config(
            dir.path(),
            addr,
            AppleStandIn::root_path(&dir.path().join("apple")),
            &tweak,
        );
        let running = mdmd::start(cfg).await.unwrap();
        let data = dir.path().join("data");
        let token = std::fs::read_to_string(data.join(mdmd::ADMIN_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_string();
        let ca_pem = running.ca_pem.clone().into_bytes();
        let admin = HttpClient::from_ca_pem(&ca_pem).unwrap();
        let app = Appliance {
            dir,
            addr,
            base_url: format!("https://127.0.0.1:{}", addr.port()),
            ca_pem,
            token,
            apple,
            admin,
            running: Some(running),
            tweak,
        };
        app.install_push_cert(TOPIC).await;
        app
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stop gracefully (as on SIGTERM).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    /// Stop and start again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.try_restart().await.unwrap();
    }

    /// [`restart`](Self::restart), answering the daemon's start-up error (its whole chain of
    /// context, as `mdmd serve` prints it) instead of panicking. After an error the appliance
    /// is stopped; a later `restart` tries again.
    pub async fn try_restart(&mut self) -> Result<(), String> {
        self.stop().await;
        let cfg = config(
            self.dir.path(),
            self.addr,
            AppleStandIn::root_path(&self.dir.path().join("apple")),
            &self.tweak,
        );
        self.running = Some(mdmd::start(cfg).await.map_err(|e| format!("{e:#}"))?);
        self.admin = HttpClient::from_ca_pem(&self.ca_pem).unwrap();
        Ok(())
    }

    /// The appliance's push CSR, signed as Apple's portal would for `topic`, then imported.
    pub async fn install_push_cert(&self, topic: &str) {
        let cert = self.push_cert_for_csr(topic).await;
        let (status, body) = self
            .api_raw("PUT", "/api/v1/push-cert", cert.into_bytes())
            .await;
        assert_eq!(status, 200, "push cert import: {body}");
    }

    /// A push certificate for the appliance's push key (from its CSR), with `topic` as UID.
    pub async fn push_cert_for_csr(&self, topic: &str) -> String {
        let (status, csr) = self
            .api_raw("POST", "/api/v1/push-cert/csr", Vec::new())
            .await;
        assert_eq!(status, 200, "push CSR: {csr}");
        sign_push_csr(csr.as_str().unwrap(), topic)
    }

    /// Drop the admin client's connection (after the daemon behind it was replaced).
    pub fn reconnect_admin(&mut self) {
        self.admin = HttpClient::from_ca_pem(&self.ca_pem).unwrap();
    }

    /// The stand-in Apple root file the daemon trusts for ADE.
    pub fn apple_root(&self) -> PathBuf {
        AppleStandIn::root_path(&self.dir.path().join("apple"))
    }

    /// An admin API call with the admin token; returns status and JSON (or the text as a
    /// JSON string when the body is not JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        self.api_raw(method, path, bytes).await
    }

    /// An admin API call with a raw body.
    pub async fn api_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.api_as(&self.token.clone(), method, path, body).await
    }

    /// An admin API call with another token.
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self.request_as(token, method, path, body).await;
        (resp.status, body_json(&resp))
    }

    /// A new API token with `role` (`Admin`, `Operator` or `Auditor`), created with the admin
    /// token; returns the secret.
    pub async fn new_token(&self, name: &str, role: &str) -> String {
        let (st, v) = self
            .api(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": name, "role": role})),
            )
            .await;
        assert_eq!(st, 201, "creating token {name}: {v}");
        v["token"]
            .as_str()
            .expect("the new token's secret")
            .to_owned()
    }

    /// A new user account (`POST /api/v1/users`), created with the admin token.
    pub async fn new_user(&self, username: &str, full_name: &str, password: &str) {
        let (st, v) = self
            .api(
                "POST",
                "/api/v1/users",
                Some(json!({"username": username, "full_name": full_name, "password": password})),
            )
            .await;
        assert_eq!(st, 201, "creating user {username}: {v}");
    }

    /// `POST /api/v1/backup` with `passphrase`, answered as it came (the backup is the body).
    pub async fn backup(&self, passphrase: &str) -> HttpResponse {
        let body = json!({ "passphrase": passphrase }).to_string().into_bytes();
        self.request_as(&self.token, "POST", "/api/v1/backup", body)
            .await
    }

    /// An admin API request with `token`, the answer as it came.
    async fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> HttpResponse {
        let auth = format!("Bearer {token}");
        let h = headers(&[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ])
        .unwrap();
        self.admin
            .request(
                method.parse().unwrap(),
                &format!("{}{path}", self.base_url),
                h,
                body,
            )
            .await
            .unwrap()
    }

    /// Defines enrollment profile `staff` ("Staff") on ABM connection `name`, makes it the
    /// connection's default and runs the assignment job: every synced device is assigned it.
    pub async fn assign_staff_profile(&self, name: &str) {
        self.default_staff_profile(name).await;
        let (st, v) = self
            .api("POST", &format!("/api/v1/abm/{name}/assign"), None)
            .await;
        assert_eq!(st, 200, "{v}");
    }

    /// Defines enrollment profile `staff` ("Staff") on ABM connection `name` and makes it the
    /// connection's default.
    pub async fn default_staff_profile(&self, name: &str) {
        let (st, v) = self
            .api(
                "PUT",
                &format!("/api/v1/abm/{name}/profiles/staff"),
                Some(json!({"profile_name": "Staff"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = self
            .api(
                "PATCH",
                &format!("/api/v1/abm/{name}"),
                Some(json!({"default_profile": "staff"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }

    /// Create an enrollment link and return its URL.
    pub async fn link(&self) -> String {
        let (status, v) = self
            .api(
                "POST",
                "/api/v1/enroll-links",
                Some(serde_json::json!({"label": "test"})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["url"].as_str().unwrap().to_string()
    }

    /// A simulated iPhone that trusts the appliance CA.
    pub fn device(&self) -> SimDevice {
        let mut d = SimDevice::random(DeviceKind::IPhone).unwrap();
        d.trust_ca_pem(&self.ca_pem).unwrap();
        d
    }

    /// Manual enrollment of a fresh device through a new link: profile, SCEP, Authenticate,
    /// TokenUpdate.
    pub async fn enroll_manual(&self) -> SimDevice {
        let mut d = self.device();
        self.enroll_manual_device(&mut d).await;
        d
    }

    /// Manual enrollment of a given device.
    pub async fn enroll_manual_device(&self, d: &mut SimDevice) {
        let url = self.link().await;
        let profile = d.manual_enroll(&self.admin, &url).await.unwrap();
        self.install_enrollment(d, &profile).await;
    }

    /// Installs an enrollment profile this appliance served (trusting its CA) and completes
    /// the enrollment: SCEP, Authenticate and the first TokenUpdate.
    pub async fn install_enrollment(&self, d: &mut SimDevice, profile: &[u8]) {
        self.install_profile(d, profile);
        d.complete_enrollment().await.unwrap();
    }

    /// Installs an enrollment profile this appliance served, checking it is signed under its CA.
    pub fn install_profile(&self, d: &mut SimDevice, profile: &[u8]) {
        let ca = mdm_sim::x509::certificates_from_pem(&self.ca_pem).unwrap();
        d.install_profile(profile, Some(&ca)).unwrap();
    }

    /// ADE as Setup Assistant does it without `configuration_web_url`: the device's signed
    /// MachineInfo POSTed to this appliance's `/mdm/enroll`; the profile, or the refusal.
    pub async fn ade_profile(&self, d: &mut SimDevice) -> Result<Vec<u8>, DeviceError> {
        d.ade_enroll(
            &self.admin,
            &format!("{}/mdm/enroll", self.base_url),
            &self.apple,
        )
        .await
    }

    /// Queue a typed command for one device; returns its UUID.
    pub async fn send(&self, device_id: &str, request_type: &str) -> String {
        let (status, v) = self
            .api(
                "POST",
                "/api/v1/commands",
                Some(serde_json::json!({"targets": [device_id], "request_type": request_type})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["command_uuid"].as_str().unwrap().to_string()
    }

    /// A command with its deliveries.
    pub async fn command(&self, uuid: &str) -> Value {
        let (status, v) = self
            .api("GET", &format!("/api/v1/commands/{uuid}"), None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// An enrollment as the API shows it.
    pub async fn enrollment(&self, id: &str) -> (u16, Value) {
        self.api("GET", &format!("/api/v1/enrollments/{id}"), None)
            .await
    }

    /// Creates ABM connection `name` against the simulator (automatic sync off) and uploads a
    /// server token the simulator issues to `server` for the connection's public key.
    pub async fn connect_abm(&self, sim: &AbmSimulator, name: &str, server: ServerId) {
        let (st, v) = self
            .api(
                "POST",
                "/api/v1/abm",
                Some(
                    json!({"name": name, "base_url": sim.base_url(), "ca_pem": sim.ca_pem(),
                            "interval_seconds": 0}),
                ),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let (_, pem) = self
            .api("GET", &format!("/api/v1/abm/{name}/public-key"), None)
            .await;
        let cert = mdm_pki::Certificate::from_pem(pem.as_str().unwrap()).unwrap();
        let opts = TokenOptions {
            cipher: ContentCipher::Aes256Cbc,
            ber: false,
            new_org: false,
        };
        let p7m = sim.server_token(server, cert.der(), &opts).unwrap();
        let (st, v) = self
            .api_raw("PUT", &format!("/api/v1/abm/{name}/token"), p7m)
            .await;
        assert_eq!(st, 200, "{v}");
    }

    /// Enrolls `d` through ADE as Setup Assistant does: MachineInfo to `/mdm/enroll`, the
    /// profile installed, SCEP, Authenticate and the first TokenUpdate.
    pub async fn enroll_ade(&self, d: &mut SimDevice) {
        let profile = self.ade_profile(d).await.unwrap();
        self.install_enrollment(d, &profile).await;
    }

    /// `GET /api/v1/devices/{key}`, which must answer 200.
    pub async fn device_view(&self, key: &str) -> Value {
        let (st, v) = self
            .api("GET", &format!("/api/v1/devices/{key}"), None)
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Waits until the device's status is `status` (lifecycle steps settle a fraction of a
    /// second after the request that caused them).
    pub async fn wait_device_status(&self, key: &str, status: &str) -> Value {
        for _ in 0..100 {
            let v = self.device_view(key).await;
            if v["status"] == status {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{key} never reached {status}: {}",
            self.device_view(key).await
        );
    }
}

/// A simulated iPad for ADE enrollment of `serial` as Setup Assistant does it: trusting the
/// anchor and awaiting configuration as the profile ABM hands out for it says.
pub fn ade_device_builder(sim: &AbmSimulator, serial: &str) -> SimDeviceBuilder {
    use base64::Engine as _;
    let activation = sim.activation(serial).unwrap();
    let anchor = activation["anchor_certs"][0].as_str().unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(anchor)
        .unwrap();
    let anchor_pem = mdm_pki::Certificate::from_der(&der).unwrap().to_pem();
    SimDevice::builder(DeviceKind::IPad)
        .unwrap()
        .serial(serial)
        .awaiting_configuration(activation["await_device_configured"] == true)
        .trust_ca_pem(anchor_pem.as_bytes())
        .unwrap()
}

/// A configuration tweak for [`Appliance::start_with`]: the TPM keystore on `tcti` (a swtpm in
/// tests).
pub fn on_tpm(tcti: String) -> impl Fn(&mut Config) + Send + Sync + 'static {
    move |c| {
        c.keystore.backend = mdmd::config::KeystoreBackend::Tpm;
        c.keystore.tcti = tcti.clone();
    }
}

/// A response body as JSON, or as a JSON string when it is not JSON.
pub fn body_json(resp: &HttpResponse) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp.body).into_owned()))
}

/// Sign a push CSR as Apple's push certificate portal would (subject UID = topic), with the
/// APNs simulator's stand-in Apple push CA.
pub fn sign_push_csr(csr_pem: &str, topic: &str) -> String {
    let apple = mdm_sim::apns::ApnsAuthorities::generate().unwrap();
    let cert = apple
        .issue_push_certificate(topic, csr_pem.as_bytes())
        .unwrap();
    mdm_sim::x509::to_pem(&cert).unwrap()
}

/// A push certificate with `topic` as UID whose key is NOT the appliance's push key.
pub fn push_cert_pem(topic: &str) -> String {
    let apple = mdm_sim::apns::ApnsAuthorities::generate().unwrap();
    let (cert, _key) = apple.issue_push_identity(topic).unwrap();
    mdm_sim::x509::to_pem(&cert).unwrap()
}

/// The daemon as a child process (for kill -9 tests).
pub struct DaemonProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

/// The `mdmd` binary built next to this test executable (`scripts/test` builds it first).
pub fn mdmd_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("mdmd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

impl DaemonProcess {
    /// Start `mdmd serve --dev` on `data_dir` and wait until it answers.
    pub fn start(data_dir: &Path, addr: SocketAddr, apple_root: &Path) -> Self {
        let child = Command::new(mdmd_binary())
            .args(["serve", "--dev", "--log-format", "text"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--ade-root")
            .arg(apple_root)
            .args(["--apns-url", NO_APNS, "--abm-url", NO_APNS])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mdmd did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        DaemonProcess { child, addr }
    }

    /// SIGKILL: no drain, no close.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Appliance {
    /// The daemon running in this process (for hooks such as
    /// [`mdmd::Running::run_offline_policy_at`]). Panics while it is stopped.
    pub fn running(&self) -> &mdmd::Running {
        self.running
            .as_ref()
            .expect("the appliance is stopped: restart it first")
    }
}
