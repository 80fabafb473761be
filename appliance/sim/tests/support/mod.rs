//! A minimal fake of the appliance's device endpoints, just enough to drive the simulated
//! device's I/O over real TLS. It is not the server under test: it exists to exercise
//! the client paths (keep-alive, client certificates, SCEP round trips, the command loop).

// Test scaffolding: a failure here should abort the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use der::{Decode, Encode};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mdm_sim::keys::PrivateKey;
use mdm_sim::scep::{self, CertRepBuilder};
use mdm_sim::x509::{self, CertificateParams, KeyUsageFlags};
use mdm_sim::{apple::AppleStandIn, cms, oids};
use plist::{Dictionary, Value};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_cert::request::CertReq;
use x509_cert::Certificate;

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub client_cert: Option<Vec<u8>>,
}

pub struct State {
    pub seen: Vec<Seen>,
    pub connections: usize,
    pub commands: VecDeque<Dictionary>,
    pub challenge: String,
    pub min_os: String,
    pub issued: Vec<Certificate>,
    pub bootstrap: Option<Vec<u8>>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub ca: Certificate,
    pub ca_key: PrivateKey,
    pub ra: Certificate,
    pub ra_key: PrivateKey,
    pub signer: Certificate,
    pub signer_key: PrivateKey,
    pub apple: AppleStandIn,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca_pem(&self) -> String {
        x509::to_pem(&self.ca).unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn last(&self, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.path.starts_with(path))
            .unwrap()
    }

    pub fn queue(&self, uuid: &str, request_type: &str) {
        let mut cmd = Dictionary::new();
        cmd.insert("RequestType".into(), request_type.into());
        if request_type == "DeviceInformation" {
            cmd.insert(
                "Queries".into(),
                Value::Array(vec!["UDID".into(), "SerialNumber".into()]),
            );
        }
        let mut e = Dictionary::new();
        e.insert("CommandUUID".into(), uuid.into());
        e.insert("Command".into(), Value::Dictionary(cmd));
        self.state.lock().unwrap().commands.push_back(e);
    }

    /// The enrollment profile this fake serves, signed by its profile signer.
    pub fn profile(&self) -> Vec<u8> {
        let base = self.base();
        let mut root = Dictionary::new();
        root.insert("PayloadType".into(), "com.apple.security.root".into());
        root.insert(
            "PayloadUUID".into(),
            "A0000000-0000-0000-0000-000000000001".into(),
        );
        root.insert("PayloadIdentifier".into(), "test.ca".into());
        root.insert("PayloadVersion".into(), 1.into());
        root.insert(
            "PayloadContent".into(),
            Value::Data(self.ca.to_der().unwrap()),
        );
        let mut scep = Dictionary::new();
        scep.insert("URL".into(), format!("{base}/scep").into());
        scep.insert("Name".into(), "test-ca".into());
        scep.insert(
            "Subject".into(),
            Value::Array(vec![Value::Array(vec![Value::Array(vec![
                "CN".into(),
                "mdm identity".into(),
            ])])]),
        );
        let challenge = self.state.lock().unwrap().challenge.clone();
        scep.insert("Challenge".into(), challenge.into());
        scep.insert("Keysize".into(), 2048.into());
        scep.insert("Key Type".into(), "RSA".into());
        scep.insert("Key Usage".into(), 5.into());
        let mut scep_payload = Dictionary::new();
        scep_payload.insert("PayloadType".into(), "com.apple.security.scep".into());
        scep_payload.insert(
            "PayloadUUID".into(),
            "A0000000-0000-0000-0000-000000000002".into(),
        );
        scep_payload.insert("PayloadIdentifier".into(), "test.scep".into());
        scep_payload.insert("PayloadVersion".into(), 1.into());
        scep_payload.insert("PayloadContent".into(), Value::Dictionary(scep));
        let mut mdm = Dictionary::new();
        mdm.insert("PayloadType".into(), "com.apple.mdm".into());
        mdm.insert(
            "PayloadUUID".into(),
            "A0000000-0000-0000-0000-000000000003".into(),
        );
        mdm.insert("PayloadIdentifier".into(), "test.mdm".into());
        mdm.insert("PayloadVersion".into(), 1.into());
        mdm.insert("ServerURL".into(), format!("{base}/mdm/connect").into());
        mdm.insert("CheckInURL".into(), format!("{base}/mdm/checkin").into());
        mdm.insert("Topic".into(), "com.apple.mgmt.External.test".into());
        mdm.insert(
            "IdentityCertificateUUID".into(),
            "A0000000-0000-0000-0000-000000000002".into(),
        );
        mdm.insert("AccessRights".into(), 8191.into());
        mdm.insert("CheckOutWhenRemoved".into(), true.into());
        mdm.insert("SignMessage".into(), true.into());
        let mut top = Dictionary::new();
        top.insert("PayloadType".into(), "Configuration".into());
        top.insert(
            "PayloadUUID".into(),
            "A0000000-0000-0000-0000-000000000000".into(),
        );
        top.insert("PayloadIdentifier".into(), "test.enroll".into());
        top.insert("PayloadVersion".into(), 1.into());
        top.insert(
            "PayloadContent".into(),
            Value::Array(vec![
                Value::Dictionary(root),
                Value::Dictionary(scep_payload),
                Value::Dictionary(mdm),
            ]),
        );
        let mut xml = Vec::new();
        Value::Dictionary(top).to_writer_xml(&mut xml).unwrap();
        cms::SignedDataBuilder::new(&xml)
            .certificate(self.signer.clone())
            .certificate(self.ca.clone())
            .sign(&self.signer, &self.signer_key)
            .unwrap()
    }
}

fn issue(
    ca: &Certificate,
    ca_key: &PrivateKey,
    cn: &str,
    ku: &[KeyUsageFlags],
) -> (Certificate, PrivateKey) {
    let key = PrivateKey::generate_rsa2048().unwrap();
    let cert = x509::issue(
        &CertificateParams::new(x509::name(&[("CN", cn)]).unwrap()).key_usage(ku),
        &key.public_key_info().unwrap(),
        Some(ca),
        ca_key,
    )
    .unwrap();
    (cert, key)
}

pub async fn start() -> Fake {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = PrivateKey::generate_rsa2048().unwrap();
    let ca = x509::self_signed(
        &CertificateParams::new(x509::name(&[("CN", "Fake appliance CA")]).unwrap()).ca(None),
        &ca_key,
    )
    .unwrap();
    let (ra, ra_key) = issue(
        &ca,
        &ca_key,
        "Fake SCEP RA",
        &[
            KeyUsageFlags::DigitalSignature,
            KeyUsageFlags::KeyEncipherment,
        ],
    );
    let (signer, signer_key) = issue(
        &ca,
        &ca_key,
        "Fake profile signer",
        &[KeyUsageFlags::DigitalSignature],
    );
    let tls_key = PrivateKey::generate_rsa2048().unwrap();
    let tls_cert = x509::issue(
        &CertificateParams::new(x509::name(&[("CN", "127.0.0.1")]).unwrap())
            .key_usage(&[
                KeyUsageFlags::DigitalSignature,
                KeyUsageFlags::KeyEncipherment,
            ])
            .extended_key_usage(&[oids::KP_SERVER_AUTH])
            .subject_alt_names(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        &tls_key.public_key_info().unwrap(),
        Some(&ca),
        &ca_key,
    )
    .unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.to_der().unwrap()))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(tls_cert.to_der().unwrap())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls_key.pkcs8_der().to_vec())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let fake = Fake {
        addr,
        ca,
        ca_key,
        ra,
        ra_key,
        signer,
        signer_key,
        apple: AppleStandIn::generate().unwrap(),
        state: Arc::new(Mutex::new(State {
            seen: Vec::new(),
            connections: 0,
            commands: VecDeque::new(),
            challenge: "one-time-challenge".into(),
            min_os: "17.0".into(),
            issued: Vec::new(),
            bootstrap: None,
        })),
    };
    let ctx = Arc::new(Ctx {
        ca: fake.ca.clone(),
        ca_key: fake.ca_key.clone(),
        ra: fake.ra.clone(),
        ra_key: fake.ra_key.clone(),
        apple_root: fake.apple.root().clone(),
        profile: Mutex::new(Vec::new()),
        state: fake.state.clone(),
    });
    *ctx.profile.lock().unwrap() = fake.profile();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                ctx.state.lock().unwrap().connections += 1;
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    let client_cert = client_cert.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(&ctx, req, client_cert).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    fake
}

struct Ctx {
    ca: Certificate,
    ca_key: PrivateKey,
    ra: Certificate,
    ra_key: PrivateKey,
    apple_root: Certificate,
    profile: Mutex<Vec<u8>>,
    state: Arc<Mutex<State>>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn challenge_of(csr: &CertReq) -> Option<String> {
    csr.info
        .attributes
        .iter()
        .find(|a| a.oid == oids::ATTR_CHALLENGE_PASSWORD)
        .and_then(|a| a.values.iter().next())
        .map(|v| String::from_utf8_lossy(v.value()).into_owned())
}

async fn handle(
    ctx: &Ctx,
    req: Request<hyper::body::Incoming>,
    client_cert: Option<Vec<u8>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    ctx.state.lock().unwrap().seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        client_cert,
    });
    let profile = ctx.profile.lock().unwrap().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", p) if p.starts_with("/enroll/") => {
            reply(200, "application/x-apple-aspen-config", profile)
        }
        ("POST", "/mdm/enroll") | ("GET", "/mdm/enroll") => {
            let signed = if method == "POST" {
                body
            } else {
                use base64::Engine;
                let h = headers
                    .get("x-apple-aspen-deviceinfo")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                base64::engine::general_purpose::STANDARD
                    .decode(h)
                    .unwrap_or_default()
            };
            let Ok(parsed) = cms::parse_signed_data(&signed) else {
                return reply(400, "text/plain", b"bad cms".to_vec());
            };
            let Ok(signer) = parsed.verify(None, &[]) else {
                return reply(400, "text/plain", b"bad sig".to_vec());
            };
            if cms::verify_signer_chain(&parsed, &signer, std::slice::from_ref(&ctx.apple_root))
                .is_err()
            {
                return reply(403, "text/plain", b"not from Apple".to_vec());
            }
            let info: Dictionary = plist::from_bytes(parsed.content.as_deref().unwrap_or_default())
                .unwrap_or_default();
            let os = info
                .get("OS_VERSION")
                .and_then(Value::as_string)
                .unwrap_or_default()
                .to_owned();
            let min = ctx.state.lock().unwrap().min_os.clone();
            if os < min {
                let json = format!(
                    r#"{{"code":"com.apple.softwareupdate.required","details":{{"OSVersion":"{min}","BuildVersion":"21E219"}}}}"#
                );
                return reply(403, "application/json", json.into_bytes());
            }
            reply(200, "application/x-apple-aspen-config", profile)
        }
        ("GET", p) if p.starts_with("/scep?operation=GetCACaps") => reply(
            200,
            "text/plain",
            b"POSTPKIOperation\nSHA-256\nAES\nRenewal\n".to_vec(),
        ),
        ("GET", p) if p.starts_with("/scep?operation=GetCACert") => reply(
            200,
            "application/x-x509-ca-ra-cert",
            cms::certs_only(&[ctx.ra.clone(), ctx.ca.clone()]).unwrap(),
        ),
        ("POST", "/scep?operation=PKIOperation") => {
            let Ok(received) = scep::open_request(&body, &ctx.ra, &ctx.ra_key) else {
                return reply(400, "text/plain", b"bad PKIMessage".to_vec());
            };
            let Ok(csr) = CertReq::from_der(&received.csr) else {
                return reply(400, "text/plain", vec![]);
            };
            let expected = ctx.state.lock().unwrap().challenge.clone();
            let allowed = match received.message_type.as_str() {
                "19" => challenge_of(&csr).as_deref() == Some(expected.as_str()),
                "17" => ctx.state.lock().unwrap().issued.contains(&received.signer),
                _ => false,
            };
            let rep = if allowed {
                let cert = x509::issue(
                    &CertificateParams::new(csr.info.subject.clone())
                        .key_usage(&[
                            KeyUsageFlags::DigitalSignature,
                            KeyUsageFlags::KeyEncipherment,
                        ])
                        .extended_key_usage(&[oids::KP_CLIENT_AUTH]),
                    &csr.info.public_key,
                    Some(&ctx.ca),
                    &ctx.ca_key,
                )
                .unwrap();
                ctx.state.lock().unwrap().issued.push(cert.clone());
                CertRepBuilder::success(&received, vec![cert, ctx.ca.clone()])
            } else {
                CertRepBuilder::failure(&received, 2)
            };
            reply(
                200,
                "application/x-pki-message",
                rep.sign(&ctx.ra, &ctx.ra_key).unwrap(),
            )
        }
        ("PUT", "/mdm/checkin") => {
            let msg: Dictionary = plist::from_bytes(&body).unwrap_or_default();
            match msg
                .get("MessageType")
                .and_then(Value::as_string)
                .unwrap_or_default()
            {
                "SetBootstrapToken" => {
                    ctx.state.lock().unwrap().bootstrap = msg
                        .get("BootstrapToken")
                        .and_then(Value::as_data)
                        .map(<[u8]>::to_vec);
                    reply(200, "text/plain", vec![])
                }
                "GetBootstrapToken" => {
                    let mut d = Dictionary::new();
                    let token = ctx
                        .state
                        .lock()
                        .unwrap()
                        .bootstrap
                        .clone()
                        .unwrap_or_default();
                    d.insert("BootstrapToken".into(), Value::Data(token));
                    let mut xml = Vec::new();
                    Value::Dictionary(d).to_writer_xml(&mut xml).unwrap();
                    reply(200, "application/xml", xml)
                }
                "UserAuthenticate" => reply(410, "text/plain", vec![]),
                "DeclarativeManagement" => {
                    reply(200, "application/json", br#"{"SyncTokens":{}}"#.to_vec())
                }
                _ => reply(200, "text/plain", vec![]),
            }
        }
        ("PUT", "/mdm/connect") => {
            let next = ctx.state.lock().unwrap().commands.pop_front();
            match next {
                Some(cmd) => {
                    let mut xml = Vec::new();
                    Value::Dictionary(cmd).to_writer_xml(&mut xml).unwrap();
                    reply(200, "application/xml", xml)
                }
                None => reply(200, "text/plain", vec![]),
            }
        }
        _ => reply(404, "text/plain", b"not found".to_vec()),
    }
}
