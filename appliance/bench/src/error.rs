//! Why a benchmark run could not complete.

use std::path::PathBuf;

/// A failure that ends the run. Per-request failures during the measured loops are counted
/// and reported instead (see `report`), so that one bad answer does not hide the figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or process operation failed.
    #[error("could not {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file did not have the expected layout.
    #[error("{path} does not have the layout this tool expects (is this Linux?)")]
    ProcFormat {
        /// The file.
        path: PathBuf,
    },
    /// The daemon binary was not found.
    #[error(
        "the daemon binary {0} does not exist: build it with `cargo build --release -p mdmd` \
         (scripts/bench does), or point --mdmd at it"
    )]
    DaemonMissing(PathBuf),
    /// The daemon did not come up.
    #[error("the daemon did not become ready: {reason}; its log is {log}")]
    DaemonStart {
        /// What went wrong.
        reason: String,
        /// The daemon's log file.
        log: PathBuf,
    },
    /// The daemon ended while the benchmark needed it.
    #[error("the daemon exited unexpectedly ({status}); its log is {log}")]
    DaemonExited {
        /// Its exit status.
        status: String,
        /// The daemon's log file.
        log: PathBuf,
    },
    /// The admin API refused a call.
    #[error("admin API {method} {path} answered HTTP {status}: {body}")]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// Status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// An admin API answer could not be understood.
    #[error("admin API {path} answered something unexpected: {reason}")]
    ApiAnswer {
        /// Request path.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// An HTTP exchange with the daemon failed at the transport level.
    #[error("HTTP exchange with the daemon failed: {0}")]
    Http(#[from] mdm_sim::error::HttpError),
    /// A simulated device could not enroll.
    #[error("simulated device {udid} could not enroll: {source}")]
    Enroll {
        /// The device.
        udid: String,
        /// What the simulator reported.
        #[source]
        source: mdm_sim::error::DeviceError,
    },
    /// Key generation or certificate handling in the simulator failed.
    #[error("simulator cryptography failed: {0}")]
    Crypto(#[from] mdm_sim::error::CryptoError),
    /// The stand-in push certificate could not be made.
    #[error("could not create the stand-in push certificate: {0}")]
    Pki(#[from] mdm_pki::PkiError),
    /// TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A device's certificate or key was refused while building its TLS client identity.
    #[error("device identity {udid} is unusable for TLS: {reason}")]
    Identity {
        /// The device.
        udid: String,
        /// Why.
        reason: String,
    },
    /// A DER structure could not be encoded.
    #[error("DER encoding failed: {0}")]
    Der(#[from] der::Error),
    /// JSON (identity file, worker results) could not be read or written.
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    /// The daemon's database could not be seeded.
    #[error("seeding the daemon's database failed: {0}")]
    Store(#[from] mdm_service::ports::StoreError),
    /// A worker process failed or answered out of protocol.
    #[error("worker process {index} failed: {reason}")]
    Worker {
        /// Which worker.
        index: usize,
        /// What happened.
        reason: String,
    },
    /// The APNs simulator could not start or issue a certificate.
    #[error("the APNs simulator failed: {0}")]
    Apns(#[source] mdm_sim::apns::ApnsError),
    /// The ABM simulator could not start, add devices or issue a server token.
    #[error("the ABM simulator failed: {0}")]
    AbmSim(#[source] mdm_sim::abm::AbmSimError),
    /// A request meant to measure responsiveness failed before any load was applied, so the
    /// daemon is not answering the way the measurement needs.
    #[error("a responsiveness probe failed on the idle daemon: {0}")]
    Probe(String),
    /// The options contradict each other or are out of range.
    #[error("invalid options: {0}")]
    Options(String),
    /// An async task panicked or was cancelled.
    #[error("a benchmark task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl BenchError {
    /// An [`BenchError::Io`] for `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
