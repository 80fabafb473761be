//! SCEP server side, driven by requests built the way a client builds them: a CSR with a
//! challengePassword, enveloped to the RA, signed with a self-signed certificate.

// Test code: a failed unwrap is a failed test, and helpers outside #[test] functions too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ca, have_openssl, openssl, read, rsa_leaf, self_signed_rsa, write, BACKDATE, DAY};
use der::asn1::{OctetString, PrintableString};
use der::{Any, Encode, Tagged};
use mdm_pki::cms::{self, ContentCipher, SignerOptions};
use mdm_pki::scep::{self, FailInfo, MessageType};
use mdm_pki::{
    issue, oid, verify_chain, Certificate, CertificateParams, CertificationRequest, KeyAlgorithm,
    Name, PkiError, PrivateKey,
};

struct Server {
    ca_key: PrivateKey,
    ca: Certificate,
    ra_key: PrivateKey,
    ra: Certificate,
}

fn server() -> Server {
    let (ca_key, ca) = ca();
    let (ra_key, ra) = rsa_leaf(&ca, &ca_key, "SCEP RA");
    Server {
        ca_key,
        ca,
        ra_key,
        ra,
    }
}

fn printable(s: &str) -> Any {
    Any::encode_from(&PrintableString::new(s).unwrap()).unwrap()
}

fn octets(b: &[u8]) -> Any {
    Any::encode_from(&OctetString::new(b).unwrap()).unwrap()
}

/// A PKIOperation message as a SCEP client builds it.
struct Request<'a> {
    message_type: &'a str,
    content: &'a [u8],
    signer: &'a Certificate,
    signer_key: &'a PrivateKey,
    ra: &'a Certificate,
    cipher: ContentCipher,
    transaction_id: Option<&'a str>,
    nonce: &'a [u8],
}

impl Request<'_> {
    fn build(&self) -> Vec<u8> {
        let enveloped = cms::envelope(self.content, self.ra, self.cipher).unwrap();
        let mut attrs = vec![
            cms::make_attribute(oid::SCEP_MESSAGE_TYPE, printable(self.message_type)).unwrap(),
            cms::make_attribute(oid::SCEP_SENDER_NONCE, octets(self.nonce)).unwrap(),
        ];
        if let Some(tx) = self.transaction_id {
            attrs.push(cms::make_attribute(oid::SCEP_TRANSACTION_ID, printable(tx)).unwrap());
        }
        let opts = SignerOptions {
            extra_signed_attributes: attrs,
            ..SignerOptions::default()
        };
        cms::sign(&enveloped, self.signer, self.signer_key, &opts).unwrap()
    }
}

fn attr_string(attrs: &[x509_cert::attr::Attribute], id: &der::asn1::ObjectIdentifier) -> String {
    let v = cms::find_attribute(attrs, id).unwrap();
    assert_eq!(v.tag(), der::Tag::PrintableString, "{id}");
    String::from_utf8(v.value().to_vec()).unwrap()
}

fn attr_octets(attrs: &[x509_cert::attr::Attribute], id: &der::asn1::ObjectIdentifier) -> Vec<u8> {
    let v = cms::find_attribute(attrs, id).unwrap();
    v.decode_as::<OctetString>().unwrap().as_bytes().to_vec()
}

#[test]
fn caps_advertise_what_is_implemented() {
    let caps: Vec<&str> = scep::CA_CAPS.lines().collect();
    for cap in [
        "POSTPKIOperation",
        "SHA-256",
        "AES",
        "SCEPStandard",
        "Renewal",
        "DES3",
        "SHA-1",
    ] {
        assert!(caps.contains(&cap), "{cap}");
    }
    assert!(scep::CA_CAPS.ends_with('\n'));
    assert_eq!(MessageType::from_code(19), Some(MessageType::PkcsReq));
    assert_eq!(MessageType::PkcsReq.code(), 19);
    assert_eq!(MessageType::from_code(4), None);
    assert_eq!(FailInfo::BadCertId.code(), 4);
}

#[test]
fn pkcsreq_to_certrep_success_with_our_csr() {
    let s = server();
    let (dev_key, dev_self) = self_signed_rsa("device-transient");
    let csr =
        CertificationRequest::build(&Name::new("device-1"), &dev_key, Some("challenge-1")).unwrap();
    let nonce = [9u8; 16];
    let msg = Request {
        message_type: "19",
        content: csr.der(),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX-0001"),
        nonce: &nonce,
    }
    .build();

    let req = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap();
    assert_eq!(req.message_type, MessageType::PkcsReq);
    assert_eq!(req.transaction_id, "TX-0001");
    assert_eq!(req.sender_nonce, nonce);
    assert_eq!(req.signer, dev_self);
    assert_eq!(req.digest_algorithm, oid::SHA256);
    assert_eq!(req.content_cipher, Some(ContentCipher::Aes256Cbc));
    assert!(req.signer_matches_csr_key());
    let parsed_csr = req.csr.as_ref().unwrap();
    assert_eq!(
        parsed_csr.challenge_password().as_deref(),
        Some("challenge-1")
    );
    assert_eq!(req.message_data, csr.der());

    let reply = issue_and_reply(&s, &req);
    check_success_reply(
        &s,
        &reply,
        &nonce,
        "TX-0001",
        &dev_self,
        &dev_key,
        ContentCipher::Aes256Cbc,
    );
}

fn issue_and_reply(s: &Server, req: &scep::PkiRequest) -> (Vec<u8>, Certificate) {
    let csr = req.csr.as_ref().unwrap();
    let mut params = CertificateParams::leaf(Name::default(), 365 * DAY, BACKDATE);
    params.subject_der = Some(csr.subject_der());
    let issued = issue(&params, &csr.public_key_der(), &s.ca, &s.ca_key).unwrap();
    let reply = scep::cert_rep_success(req, &issued, std::slice::from_ref(&s.ca), &s.ra, &s.ra_key)
        .unwrap();
    (reply, issued)
}

fn check_success_reply(
    s: &Server,
    (reply, issued): &(Vec<u8>, Certificate),
    nonce: &[u8],
    tx: &str,
    requester: &Certificate,
    requester_key: &PrivateKey,
    cipher: ContentCipher,
) {
    let v = cms::verify(reply, None).unwrap();
    assert_eq!(v.signer, s.ra);
    assert_eq!(v.digest_algorithm, oid::SHA256);
    let attrs = &v.signed_attributes;
    assert_eq!(attr_string(attrs, &oid::SCEP_MESSAGE_TYPE), "3");
    assert_eq!(attr_string(attrs, &oid::SCEP_PKI_STATUS), "0");
    assert_eq!(attr_string(attrs, &oid::SCEP_TRANSACTION_ID), tx);
    assert_eq!(attr_octets(attrs, &oid::SCEP_RECIPIENT_NONCE), nonce);
    let sender_nonce = attr_octets(attrs, &oid::SCEP_SENDER_NONCE);
    assert_eq!(sender_nonce.len(), 16);
    assert_ne!(sender_nonce, nonce);
    assert!(cms::find_attribute(attrs, &oid::SCEP_FAIL_INFO).is_none());

    let (inner, used) = cms::open_envelope(&v.content, requester, requester_key).unwrap();
    assert_eq!(used, cipher);
    let certs = cms::certificates(&inner).unwrap();
    let found = certs
        .iter()
        .find(|c| c.public_key_der() == issued.public_key_der())
        .expect("issued certificate in the reply");
    assert_eq!(found, issued);
    assert!(certs.contains(&s.ca));
    verify_chain(
        found,
        &[],
        std::slice::from_ref(&s.ca),
        std::time::SystemTime::now(),
    )
    .unwrap();
}

#[test]
fn pkcsreq_with_openssl_csr_and_des3_and_openssl_reads_the_reply() {
    if !have_openssl() {
        return;
    }
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "req.cnf",
        "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n\
         [dn]\nO = Example School\nCN = iPad of Ana\n[attrs]\nchallengePassword = 5f1c0a77\n",
    );
    openssl(
        d,
        &[
            "req", "-new", "-config", "req.cnf", "-newkey", "rsa:2048", "-nodes", "-keyout",
            "dev.key", "-outform", "DER", "-out", "csr.der",
        ],
    );
    let dev_key =
        PrivateKey::from_pkcs8_pem(&String::from_utf8(read(d, "dev.key")).unwrap()).unwrap();
    // The transient self-signed certificate for the same key, made by openssl as well.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "dev.key",
            "-subj",
            "/CN=transient",
            "-days",
            "1",
            "-out",
            "dev_self.pem",
        ],
    );
    let dev_self =
        Certificate::from_pem(&String::from_utf8(read(d, "dev_self.pem")).unwrap()).unwrap();

    let nonce: Vec<u8> = (0..16).collect();
    let msg = Request {
        message_type: "19",
        content: &read(d, "csr.der"),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::DesEde3Cbc,
        transaction_id: Some("3F2504E04F8911D39A0C0305E82C3301"),
        nonce: &nonce,
    }
    .build();
    let req = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap();
    assert_eq!(req.content_cipher, Some(ContentCipher::DesEde3Cbc));
    let csr = req.csr.as_ref().unwrap();
    assert_eq!(csr.challenge_password().as_deref(), Some("5f1c0a77"));
    assert_eq!(csr.subject(), "CN=iPad of Ana,O=Example School");
    assert!(req.signer_matches_csr_key());

    let reply = issue_and_reply(&s, &req);
    assert_eq!(reply.1.subject(), "CN=iPad of Ana,O=Example School");
    check_success_reply(
        &s,
        &reply,
        &nonce,
        "3F2504E04F8911D39A0C0305E82C3301",
        &dev_self,
        &dev_key,
        ContentCipher::DesEde3Cbc,
    );

    // openssl unwraps the three layers too: verify with the CA, decrypt with the device key,
    // print the certificates.
    write(d, "ca.pem", s.ca.to_pem());
    write(d, "certrep.der", &reply.0);
    openssl(
        d,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "certrep.der",
            "-CAfile",
            "ca.pem",
            "-out",
            "enveloped.der",
        ],
    );
    openssl(
        d,
        &[
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "enveloped.der",
            "-recip",
            "dev_self.pem",
            "-inkey",
            "dev.key",
            "-out",
            "degenerate.der",
        ],
    );
    let printed = String::from_utf8(openssl(
        d,
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "degenerate.der",
            "-print_certs",
            "-noout",
        ],
    ))
    .unwrap();
    assert!(printed.contains("CN = iPad of Ana"), "{printed}");
    assert!(printed.contains("CN = Test Appliance CA"), "{printed}");
}

#[test]
fn renewal_request_is_signed_by_the_existing_identity() {
    let s = server();
    let (old_key, old_identity) = rsa_leaf(&s.ca, &s.ca_key, "device-1");
    let new_key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let csr = CertificationRequest::build(&Name::new("device-1"), &new_key, None).unwrap();
    let msg = Request {
        message_type: "17",
        content: csr.der(),
        signer: &old_identity,
        signer_key: &old_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes128Cbc,
        transaction_id: Some("renew-1"),
        nonce: &[1; 16],
    }
    .build();
    let req = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap();
    assert_eq!(req.message_type, MessageType::RenewalReq);
    assert_eq!(req.signer, old_identity);
    assert!(!req.signer_matches_csr_key());
    assert!(req.csr.as_ref().unwrap().challenge_password().is_none());
    // The caller decides renewal policy; the signer chains to our CA.
    verify_chain(
        &req.signer,
        &[],
        std::slice::from_ref(&s.ca),
        std::time::SystemTime::now(),
    )
    .unwrap();

    let reply = issue_and_reply(&s, &req);
    // The reply is encrypted to the old identity, which holds the old key.
    check_success_reply(
        &s,
        &reply,
        &[1; 16],
        "renew-1",
        &old_identity,
        &old_key,
        ContentCipher::Aes128Cbc,
    );
}

#[test]
fn failure_and_pending_replies() {
    let s = server();
    let nonce = [0xab; 16];
    let reply =
        scep::cert_rep_failure("TX-9", &nonce, FailInfo::BadRequest, &s.ra, &s.ra_key).unwrap();
    // No content: detached over the empty string.
    assert!(cms::verify(&reply, None).is_err());
    let v = cms::verify(&reply, Some(b"")).unwrap();
    assert_eq!(v.signer, s.ra);
    let attrs = &v.signed_attributes;
    assert_eq!(attr_string(attrs, &oid::SCEP_MESSAGE_TYPE), "3");
    assert_eq!(attr_string(attrs, &oid::SCEP_PKI_STATUS), "2");
    assert_eq!(attr_string(attrs, &oid::SCEP_FAIL_INFO), "2");
    assert_eq!(attr_string(attrs, &oid::SCEP_TRANSACTION_ID), "TX-9");
    assert_eq!(attr_octets(attrs, &oid::SCEP_RECIPIENT_NONCE), nonce);
    assert_eq!(attr_octets(attrs, &oid::SCEP_SENDER_NONCE).len(), 16);

    let reply = scep::cert_rep_failure("TX-9", &nonce, FailInfo::BadMessageCheck, &s.ra, &s.ra_key)
        .unwrap();
    let v = cms::verify(&reply, Some(b"")).unwrap();
    assert_eq!(attr_string(&v.signed_attributes, &oid::SCEP_FAIL_INFO), "1");

    let reply = scep::cert_rep_pending("TX-10", &nonce, &s.ra, &s.ra_key).unwrap();
    let v = cms::verify(&reply, Some(b"")).unwrap();
    assert_eq!(
        attr_string(&v.signed_attributes, &oid::SCEP_PKI_STATUS),
        "3"
    );
    assert!(cms::find_attribute(&v.signed_attributes, &oid::SCEP_FAIL_INFO).is_none());

    // A transactionID outside PrintableString is echoed rather than refused.
    let reply =
        scep::cert_rep_failure("tx_with@odd", &nonce, FailInfo::BadTime, &s.ra, &s.ra_key).unwrap();
    let v = cms::verify(&reply, Some(b"")).unwrap();
    let tx = cms::find_attribute(&v.signed_attributes, &oid::SCEP_TRANSACTION_ID).unwrap();
    assert_eq!(tx.value(), b"tx_with@odd");
}

#[test]
fn getcacert_answer_holds_ra_and_ca() {
    let s = server();
    let der = scep::ca_ra_certs(&s.ra, &s.ca).unwrap();
    let certs = cms::certificates(&der).unwrap();
    assert_eq!(certs.len(), 2);
    assert!(certs.contains(&s.ra) && certs.contains(&s.ca));
}

#[test]
fn refused_requests_say_why_and_how_to_answer() {
    let s = server();
    let (dev_key, dev_self) = self_signed_rsa("device");
    let csr = CertificationRequest::build(&Name::new("device"), &dev_key, Some("c")).unwrap();
    let nonce = [3u8; 16];
    let good = Request {
        message_type: "19",
        content: csr.der(),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &nonce,
    }
    .build();

    // Broken signature: BadMessageCheck, addressed.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let err = scep::parse_request(&bad, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadMessageCheck, "{err}");
    let partial = err.partial.as_ref().unwrap();
    assert_eq!(partial.transaction_id, "TX");
    assert_eq!(partial.sender_nonce, nonce);
    assert_eq!(partial.message_type, Some(MessageType::PkcsReq));
    assert!(matches!(err.source, PkiError::BadSignature));
    // ... and the failure reply can be built from it.
    scep::cert_rep_failure(
        &partial.transaction_id,
        &partial.sender_nonce,
        err.fail_info,
        &s.ra,
        &s.ra_key,
    )
    .unwrap();

    // Enveloped to somebody else: BadRequest, addressed.
    let (_, other_ra) = rsa_leaf(&s.ca, &s.ca_key, "other RA");
    let msg = Request {
        message_type: "19",
        content: csr.der(),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &other_ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &nonce,
    }
    .build();
    let err = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadRequest);
    assert!(err.partial.is_some());
    assert!(matches!(err.source, PkiError::NoMatchingRecipient));

    // No transactionID: not addressable.
    let msg = Request {
        message_type: "19",
        content: csr.der(),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: None,
        nonce: &nonce,
    }
    .build();
    let err = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadRequest);
    assert!(err.partial.is_none());

    // Unknown or response message types.
    for t in ["3", "99", "nineteen"] {
        let msg = Request {
            message_type: t,
            content: csr.der(),
            signer: &dev_self,
            signer_key: &dev_key,
            ra: &s.ra,
            cipher: ContentCipher::Aes256Cbc,
            transaction_id: Some("TX"),
            nonce: &nonce,
        }
        .build();
        let err = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap_err();
        assert_eq!(err.fail_info, FailInfo::BadRequest, "{t}");
        assert!(err.partial.is_some());
    }

    // The envelope holds something that is not a CSR.
    let msg = Request {
        message_type: "19",
        content: b"not a csr",
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &nonce,
    }
    .build();
    let err = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadRequest);

    // A CSR whose self-signature is broken.
    let mut broken_csr = csr.der().to_vec();
    let n = broken_csr.len();
    broken_csr[n - 1] ^= 1;
    let msg = Request {
        message_type: "19",
        content: &broken_csr,
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &nonce,
    }
    .build();
    let err = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadMessageCheck);

    // GetCert carries an IssuerAndSerialNumber, not a CSR.
    let ias = cms_ias(&s.ca);
    let msg = Request {
        message_type: "21",
        content: &ias,
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &nonce,
    }
    .build();
    let req = scep::parse_request(&msg, &s.ra, &s.ra_key).unwrap();
    assert_eq!(req.message_type, MessageType::GetCert);
    assert!(req.csr.is_none());
    assert_eq!(req.message_data, ias);

    // Not SCEP at all.
    let plain = cms::sign(b"hello", &dev_self, &dev_key, &SignerOptions::default()).unwrap();
    let err = scep::parse_request(&plain, &s.ra, &s.ra_key).unwrap_err();
    assert_eq!(err.fail_info, FailInfo::BadRequest);
    assert!(err.partial.is_none());
}

fn cms_ias(cert: &Certificate) -> Vec<u8> {
    ::cms::cert::IssuerAndSerialNumber {
        issuer: cert.inner().tbs_certificate.issuer.clone(),
        serial_number: cert.inner().tbs_certificate.serial_number.clone(),
    }
    .to_der()
    .unwrap()
}

#[test]
fn garbage_gives_errors_never_panics() {
    let s = server();
    let (dev_key, dev_self) = self_signed_rsa("device");
    let csr = CertificationRequest::build(&Name::new("device"), &dev_key, Some("c")).unwrap();
    let good = Request {
        message_type: "19",
        content: csr.der(),
        signer: &dev_self,
        signer_key: &dev_key,
        ra: &s.ra,
        cipher: ContentCipher::Aes256Cbc,
        transaction_id: Some("TX"),
        nonce: &[1; 16],
    }
    .build();
    scep::parse_request(&good, &s.ra, &s.ra_key).unwrap();

    for input in [&b""[..], b"\x30", b"\x30\x80", b"GET /scep", &[0xff; 64]] {
        let err = scep::parse_request(input, &s.ra, &s.ra_key).unwrap_err();
        assert!(err.partial.is_none());
    }
    for cut in (0..good.len()).step_by(7) {
        assert!(scep::parse_request(&good[..cut], &s.ra, &s.ra_key).is_err());
    }
    let mut seed = 0x2545_f491_u32;
    for pos in (0..good.len()).step_by(11) {
        let mut bad = good.clone();
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        bad[pos] ^= (seed as u8) | 1;
        // Either refused or, if the flip hit something unsigned and irrelevant, still correct.
        if let Ok(req) = scep::parse_request(&bad, &s.ra, &s.ra_key) {
            assert_eq!(req.csr.unwrap().der(), csr.der());
        }
    }
}
