//! The admin API calls the benchmark needs (see `docs/reference/api.md`): import a push
//! certificate, create an enrollment link, queue commands in batches, read their outcome, and
//! set up and sync an Apple Business Manager connection, import pre-enrollment CSV files and
//! read the device list.

use std::time::Duration;

use http::Method;
use mdm_sim::apns::ApnsAuthorities;
use mdm_sim::http::{headers, HttpClient};
use serde_json::{json, Value};

use crate::error::BenchError;

/// Targets per `POST /api/v1/commands` (the API's limit).
pub const MAX_TARGETS_PER_CALL: usize = 10_000;

/// The push topic of the stand-in push certificate.
pub const TOPIC: &str = "com.apple.mgmt.External.6d1c0b1e-2f4a-4c8e-9b7d-0b3c4e5f6a71";

/// An admin API session (kept-alive HTTPS, bearer token).
#[derive(Debug)]
pub struct Admin {
    client: HttpClient,
    base_url: String,
    authorization: String,
}

fn truncate(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(400).collect()
}

impl Admin {
    /// A session trusting the CAs in `ca_pem`.
    pub fn new(ca_pem: &str, base_url: &str, token: &str) -> Result<Admin, BenchError> {
        Ok(Admin {
            // Listing a 10,000-target command returns megabytes of JSON; give it time.
            client: HttpClient::from_ca_pem(ca_pem.as_bytes())?
                .with_timeout(Duration::from_secs(300)),
            base_url: base_url.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {token}"),
        })
    }

    /// Sends one request and returns the answer's body; any status but 2xx is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, BenchError> {
        let h = headers(&[
            ("authorization", &self.authorization),
            ("content-type", content_type),
        ])?;
        let name: &'static str = match method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "request",
        };
        let resp = self
            .client
            .request(method, &format!("{}{path}", self.base_url), h, body)
            .await?;
        if !resp.is_success() {
            return Err(BenchError::Api {
                method: name,
                path: path.to_owned(),
                status: resp.status,
                body: truncate(&resp.body),
            });
        }
        Ok(resp.body.to_vec())
    }

    /// The same session with another per-request timeout (a full ABM sync of 100,000 devices
    /// answers only when it is done).
    pub fn with_timeout(mut self, timeout: Duration) -> Admin {
        self.client = self.client.with_timeout(timeout);
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, BenchError> {
        let body = self.send(method, path, content_type, body).await?;
        serde_json::from_slice(&body).map_err(|e| BenchError::ApiAnswer {
            path: path.to_owned(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// Gets the appliance's push CSR and imports a push certificate for it with subject UID
    /// [`TOPIC`], issued by `apple`'s stand-in push CA as Apple's portal would. A push service
    /// simulator built on the same authorities accepts it as TLS client certificate.
    pub async fn import_push_cert(&self, apple: &ApnsAuthorities) -> Result<(), BenchError> {
        let path = "/api/v1/push-cert/csr";
        let h = headers(&[("authorization", &self.authorization)])?;
        let resp = self
            .client
            .request(
                Method::POST,
                &format!("{}{path}", self.base_url),
                h,
                Vec::new(),
            )
            .await?;
        if !resp.is_success() {
            return Err(BenchError::Api {
                method: "POST",
                path: path.to_owned(),
                status: resp.status,
                body: truncate(&resp.body),
            });
        }
        let cert = apple
            .issue_push_certificate(TOPIC, &resp.body)
            .map_err(|e| BenchError::ApiAnswer {
                path: path.to_owned(),
                reason: format!("cannot issue a push certificate for the CSR: {e}"),
            })?;
        let der = der::Encode::to_der(&cert).map_err(|e| BenchError::ApiAnswer {
            path: path.to_owned(),
            reason: format!("push certificate encoding: {e}"),
        })?;
        self.call(
            Method::PUT,
            "/api/v1/push-cert",
            "application/pkix-cert",
            der,
        )
        .await
        .map(drop)
    }

    /// Creates an enrollment link without a use limit; returns its id and URL.
    pub async fn create_link(&self) -> Result<(String, String), BenchError> {
        let body = json!({"label": "mdm-bench"}).to_string().into_bytes();
        let v = self
            .call(
                Method::POST,
                "/api/v1/enroll-links",
                "application/json",
                body,
            )
            .await?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| BenchError::ApiAnswer {
                    path: "/api/v1/enroll-links".into(),
                    reason: format!("no {name} in the answer"),
                })
        };
        Ok((field("id")?, field("url")?))
    }

    /// Queues one command of `request_type` for every target (at most
    /// [`MAX_TARGETS_PER_CALL`]); returns its UUID. Fails if any target was refused.
    pub async fn queue(
        &self,
        targets: &[String],
        request_type: &str,
    ) -> Result<String, BenchError> {
        let path = "/api/v1/commands";
        let body = json!({"targets": targets, "request_type": request_type})
            .to_string()
            .into_bytes();
        let v = self
            .call(Method::POST, path, "application/json", body)
            .await?;
        let answer = |reason: String| BenchError::ApiAnswer {
            path: path.into(),
            reason,
        };
        let refused = v["refused"].as_array().map_or(0, Vec::len);
        let queued = v["queued"].as_array().map_or(0, Vec::len);
        if refused > 0 || queued != targets.len() {
            return Err(answer(format!(
                "{queued} of {} targets queued, {refused} refused",
                targets.len()
            )));
        }
        v["command_uuid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| answer("no command_uuid".into()))
    }

    /// For one command: how many deliveries are `Acknowledged`, out of how many.
    pub async fn acknowledged(&self, uuid: &str) -> Result<(u64, u64), BenchError> {
        // One delivery is enough: the counts cover them all.
        let path = format!("/api/v1/commands/{uuid}?limit=1");
        let v = self
            .call(Method::GET, &path, "application/json", Vec::new())
            .await?;
        let missing = |what: &str| BenchError::ApiAnswer {
            path: path.clone(),
            reason: format!("no {what}"),
        };
        let total = v["total_deliveries"]
            .as_u64()
            .ok_or_else(|| missing("total_deliveries"))?;
        let counts = v["delivery_counts"]
            .as_object()
            .ok_or_else(|| missing("delivery_counts"))?;
        let acked = counts
            .get("Acknowledged")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok((acked, total))
    }

    /// `POST /api/v1/abm`: creates ABM connection `name` against `base_url` (trusting
    /// `ca_pem`) with automatic sync off, so that only the benchmark's calls sync it.
    pub async fn abm_create(
        &self,
        name: &str,
        base_url: &str,
        ca_pem: &str,
    ) -> Result<Value, BenchError> {
        let body = json!({
            "name": name,
            "base_url": base_url,
            "ca_pem": ca_pem,
            "interval_seconds": 0,
        });
        self.call(
            Method::POST,
            "/api/v1/abm",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `GET /api/v1/abm/{name}/public-key`: the PEM certificate to upload to ABM.
    pub async fn abm_public_key(&self, name: &str) -> Result<String, BenchError> {
        let path = format!("/api/v1/abm/{name}/public-key");
        let pem = self
            .send(Method::GET, &path, "application/json", Vec::new())
            .await?;
        String::from_utf8(pem).map_err(|_| BenchError::ApiAnswer {
            path,
            reason: "the public key certificate is not PEM text".into(),
        })
    }

    /// `PUT /api/v1/abm/{name}/token` with the `.p7m` as ABM serves it.
    pub async fn abm_upload_token(&self, name: &str, p7m: Vec<u8>) -> Result<Value, BenchError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/abm/{name}/token"),
            "application/pkcs7-mime",
            p7m,
        )
        .await
    }

    /// `PUT /api/v1/abm/{name}/profiles/{profile}`: defines the profile (with Apple too).
    pub async fn abm_put_profile(
        &self,
        name: &str,
        profile: &str,
        body: &Value,
    ) -> Result<Value, BenchError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/abm/{name}/profiles/{profile}"),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `PATCH /api/v1/abm/{name}`.
    pub async fn abm_patch(&self, name: &str, body: &Value) -> Result<Value, BenchError> {
        self.call(
            Method::PATCH,
            &format!("/api/v1/abm/{name}"),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `GET /api/v1/abm/{name}`: the connection object.
    pub async fn abm_connection(&self, name: &str) -> Result<Value, BenchError> {
        self.call(
            Method::GET,
            &format!("/api/v1/abm/{name}"),
            "application/json",
            Vec::new(),
        )
        .await
    }

    /// `POST /api/v1/abm/{name}/sync`: syncs and assigns, answering the sync run when done.
    pub async fn abm_sync(&self, name: &str) -> Result<Value, BenchError> {
        self.call(
            Method::POST,
            &format!("/api/v1/abm/{name}/sync"),
            "application/json",
            Vec::new(),
        )
        .await
    }

    /// `GET /api/v1/abm/{name}/devices/{serial}`: one device as the appliance stores it.
    pub async fn abm_device(&self, name: &str, serial: &str) -> Result<Value, BenchError> {
        self.call(
            Method::GET,
            &format!("/api/v1/abm/{name}/devices/{serial}"),
            "application/json",
            Vec::new(),
        )
        .await
    }

    /// `GET path` (with its query), answering the body as received: what the device list's
    /// latency is measured on, before any parsing.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, BenchError> {
        self.send(Method::GET, path, "application/json", Vec::new())
            .await
    }

    /// `GET path` (with its query), answering its JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, BenchError> {
        self.call(Method::GET, path, "application/json", Vec::new())
            .await
    }

    /// `POST /api/v1/preenroll/import?{query}` with a CSV file; the import report. A refused
    /// import (409, 422) is an error like any other status but 2xx.
    pub async fn preenroll_import(&self, csv: Vec<u8>, query: &str) -> Result<Value, BenchError> {
        let path = if query.is_empty() {
            "/api/v1/preenroll/import".to_owned()
        } else {
            format!("/api/v1/preenroll/import?{query}")
        };
        self.call(Method::POST, &path, "text/csv; charset=utf-8", csv)
            .await
    }
}
