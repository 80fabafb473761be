//! The figures a run produces, as JSON (`--json`) or as a readable block of one figure per
//! line. The last block sets the figures beside the targets from the issue; it compares, it
//! does not judge: benchmarks never fail on time.

use std::fmt::Write as _;

use serde::Serialize;

use crate::histogram::Histogram;

/// Bytes per MiB, for memory figures.
const MIB: f64 = 1024.0 * 1024.0;

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

/// The settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Devices enrolled through the protocol.
    pub devices: usize,
    /// Concurrent round-trip clients (all workers together).
    pub concurrency: usize,
    /// Worker processes.
    pub workers: usize,
    /// Commands queued per device per round.
    pub commands_per_round: usize,
    /// Round-trip rounds.
    pub rounds: usize,
    /// Devices enrolling at once.
    pub enroll_concurrency: usize,
    /// RSA keys shared by the devices.
    pub key_pool: usize,
    /// The command queued.
    pub request_type: String,
    /// Enrollments on file for phase 3, if it ran.
    pub rss_devices: Option<usize>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl From<&Histogram> for Percentiles {
    fn from(h: &Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.percentile_micros(50.0)),
            p90: ms(h.percentile_micros(90.0)),
            p99: ms(h.percentile_micros(99.0)),
            max: ms(h.max_micros()),
            mean: h.mean_micros() / 1000.0,
        }
    }
}

/// Daemon memory in MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryFigures {
    /// `VmRSS`.
    pub rss_mib: f64,
    /// `VmHWM`: the peak since the daemon started.
    pub peak_rss_mib: f64,
}

impl From<crate::procfs::Memory> for MemoryFigures {
    fn from(m: crate::procfs::Memory) -> Self {
        MemoryFigures {
            rss_mib: m.rss as f64 / MIB,
            peak_rss_mib: m.peak_rss as f64 / MIB,
        }
    }
}

/// How busy one kind of daemon thread was during a round.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    /// Thread name (as the kernel keeps it: at most 15 bytes).
    pub name: String,
    /// CPU time of all threads of that name divided by wall time.
    pub cores: f64,
}

/// Phase 1.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentFigures {
    /// Devices enrolled.
    pub devices: usize,
    /// Wall time.
    pub wall_seconds: f64,
    /// Enrollment rate.
    pub devices_per_second: f64,
    /// Daemon CPU time divided by devices.
    pub server_cpu_ms_per_device: f64,
    /// This process's CPU time divided by devices.
    pub client_cpu_ms_per_device: f64,
    /// Daemon memory afterwards.
    pub server_memory: MemoryFigures,
}

/// One round of phase 2 (or phase 3's round).
#[derive(Debug, Clone, Serialize)]
pub struct RoundFigures {
    /// Round number, from 1.
    pub round: usize,
    /// Devices driven.
    pub devices: usize,
    /// Device sessions (connections) established.
    pub sessions: u64,
    /// Sessions that resumed an earlier TLS session.
    pub resumed_sessions: u64,
    /// Requests answered.
    pub requests: u64,
    /// Acknowledged reports answered with 200.
    pub acknowledged: u64,
    /// Sessions that failed.
    pub failed_sessions: u64,
    /// Sessions that got an unexpected number of commands.
    pub mismatched_sessions: u64,
    /// Deliveries the admin API shows as Acknowledged after the round.
    pub verified_acknowledged: u64,
    /// Deliveries queued for the round.
    pub queued_deliveries: u64,
    /// Wall time of the measured window.
    pub wall_seconds: f64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Request latency.
    pub latency_ms: Percentiles,
    /// Connection setup (TCP + TLS).
    pub connect_ms: Percentiles,
    /// Daemon CPU time divided by requests.
    pub server_cpu_ms_per_request: f64,
    /// Client CPU time (workers and coordinator) divided by requests.
    pub client_cpu_ms_per_request: f64,
    /// Daemon CPU time divided by wall time (cores kept busy).
    pub server_cores: f64,
    /// Client CPU time divided by wall time.
    pub client_cores: f64,
    /// Daemon CPU by thread name, busiest first.
    pub server_threads: Vec<ThreadCpu>,
    /// Daemon memory after the round.
    pub server_memory: MemoryFigures,
    /// Size of the daemon's database file after the round, MiB.
    pub database_mib: f64,
    /// A few failure messages, if any.
    pub error_samples: Vec<String>,
}

/// Phase 3.
#[derive(Debug, Clone, Serialize)]
pub struct LargeFigures {
    /// Enrollments on file.
    pub enrollments: usize,
    /// Of those, enrolled through the protocol (and driven by the round).
    pub enrolled_through_protocol: usize,
    /// Of those, seeded directly into the database.
    pub seeded: usize,
    /// Time to seed them.
    pub seed_seconds: f64,
    /// Daemon memory right after the restart, before any device traffic.
    pub memory_after_restart: MemoryFigures,
    /// The round run afterwards (memory after it is in there).
    pub round: RoundFigures,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run finished (RFC 3339, UTC).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// With what settings.
    pub settings: Settings,
    /// Phase 1.
    pub enrollment: EnrollmentFigures,
    /// Phase 2.
    pub rounds: Vec<RoundFigures>,
    /// Phase 3, if requested.
    pub large: Option<LargeFigures>,
}

fn line(out: &mut String, label: &str, value: String) {
    let _ = writeln!(out, "  {label:<34}{value}");
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.3} ms")
    }
}

fn mib(m: &MemoryFigures) -> String {
    format!("{:.1} MiB (peak {:.1} MiB)", m.rss_mib, m.peak_rss_mib)
}

fn round_block(out: &mut String, r: &RoundFigures) {
    line(
        out,
        "requests",
        format!(
            "{} ({} device sessions, {} failed, {} with unexpected command count)",
            r.requests, r.sessions, r.failed_sessions, r.mismatched_sessions
        ),
    );
    line(
        out,
        "TLS sessions resumed",
        format!("{} of {}", r.resumed_sessions, r.sessions),
    );
    line(
        out,
        "results recorded (admin API)",
        format!(
            "{} of {} deliveries Acknowledged",
            r.verified_acknowledged, r.queued_deliveries
        ),
    );
    line(out, "wall time", format!("{:.2} s", r.wall_seconds));
    line(
        out,
        "throughput",
        format!("{:.0} requests/s", r.requests_per_second),
    );
    line(out, "latency p50", ms(r.latency_ms.p50));
    line(out, "latency p90", ms(r.latency_ms.p90));
    line(out, "latency p99", ms(r.latency_ms.p99));
    line(out, "latency max", ms(r.latency_ms.max));
    line(out, "connect (TCP+TLS) p50", ms(r.connect_ms.p50));
    line(out, "connect (TCP+TLS) p99", ms(r.connect_ms.p99));
    line(
        out,
        "server CPU per request",
        format!(
            "{} ({:.2} cores busy)",
            ms(r.server_cpu_ms_per_request),
            r.server_cores
        ),
    );
    line(
        out,
        "client CPU per request",
        format!(
            "{} ({:.2} cores busy)",
            ms(r.client_cpu_ms_per_request),
            r.client_cores
        ),
    );
    if !r.server_threads.is_empty() {
        let threads: Vec<String> = r
            .server_threads
            .iter()
            .map(|t| format!("{} {:.2}", t.name, t.cores))
            .collect();
        line(out, "server cores by thread", threads.join(", "));
    }
    line(out, "server RSS after", mib(&r.server_memory));
    line(out, "database file", format!("{:.0} MiB", r.database_mib));
    for e in &r.error_samples {
        let _ = writeln!(out, "    ! {e}");
    }
}

impl Report {
    /// The readable form.
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mdm-bench {}: {} CPUs ({}), Linux {}",
            self.date, self.machine.cpus, self.machine.cpu_model, self.machine.kernel
        );
        let _ = writeln!(
            out,
            "mdmd release build, --dev (software keystore), durable writes (redb group commit)\n"
        );

        let e = &self.enrollment;
        let _ = writeln!(
            out,
            "enrollment: link -> profile -> SCEP -> Authenticate -> TokenUpdate, {} devices at a time",
            s.enroll_concurrency
        );
        line(&mut out, "devices enrolled", e.devices.to_string());
        line(&mut out, "wall time", format!("{:.1} s", e.wall_seconds));
        line(
            &mut out,
            "rate",
            format!("{:.1} devices/s", e.devices_per_second),
        );
        line(
            &mut out,
            "server CPU per enrollment",
            ms(e.server_cpu_ms_per_device),
        );
        line(
            &mut out,
            "client CPU per enrollment",
            ms(e.client_cpu_ms_per_device),
        );
        line(&mut out, "server RSS after", mib(&e.server_memory));

        for r in &self.rounds {
            let _ = writeln!(
                out,
                "\nround {} of {}: {} devices x (Idle + {} {} + Acknowledged), {} clients in {} processes, mTLS",
                r.round, s.rounds, r.devices, s.commands_per_round, s.request_type, s.concurrency, s.workers
            );
            round_block(&mut out, r);
        }

        if let Some(l) = &self.large {
            let _ = writeln!(
                out,
                "\nlarge database: {} enrollments on file ({} enrolled through the protocol, {} rows SEEDED \
                 directly into mdm.redb with fake identity hashes; only the former connect)",
                l.enrollments, l.enrolled_through_protocol, l.seeded
            );
            line(&mut out, "seeding time", format!("{:.1} s", l.seed_seconds));
            line(
                &mut out,
                "server RSS after restart",
                mib(&l.memory_after_restart),
            );
            round_block(&mut out, &l.round);
        }

        out.push_str("\ntargets (from the issue; the figures are compared, not asserted)\n");
        if let Some(last) = self.rounds.last() {
            let _ = writeln!(
                out,
                "  (round figures from round {}: {} of {} TLS sessions resumed)",
                last.round, last.resumed_sessions, last.sessions
            );
            line(
                &mut out,
                "server CPU per protocol request",
                format!(
                    "{:<23} target <= 0.1 ms",
                    ms(last.server_cpu_ms_per_request)
                ),
            );
            line(
                &mut out,
                &format!("requests/s with {} devices", s.devices),
                format!(
                    "{:<23} target >= 5000 (10k devices)",
                    format!("{:.0}", last.requests_per_second)
                ),
            );
            line(
                &mut out,
                "p99 latency",
                format!(
                    "{:<23} target < 25 ms at 5000 requests/s",
                    ms(last.latency_ms.p99)
                ),
            );
            line(
                &mut out,
                &format!("server RSS at {} devices", s.devices),
                format!(
                    "{:<23} target < 150 MB at 10k",
                    format!("{:.1} MiB", last.server_memory.rss_mib)
                ),
            );
        }
        match &self.large {
            Some(l) => line(
                &mut out,
                &format!("server RSS at {} enrollments", l.enrollments),
                format!(
                    "{:<23} target < 250 MB at 100k",
                    format!("{:.1} MiB", l.round.server_memory.rss_mib)
                ),
            ),
            None => line(
                &mut out,
                "server RSS at 100k enrollments",
                format!("{:<23} target < 250 MB", "not run (--rss-devices)"),
            ),
        }
        line(
            &mut out,
            "enrollment server CPU per device",
            format!("{:<23} target < 5 ms", ms(e.server_cpu_ms_per_device)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round() -> RoundFigures {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record_micros(v * 10);
        }
        RoundFigures {
            round: 1,
            devices: 100,
            sessions: 100,
            resumed_sessions: 0,
            requests: 500,
            acknowledged: 400,
            failed_sessions: 0,
            mismatched_sessions: 0,
            verified_acknowledged: 400,
            queued_deliveries: 400,
            wall_seconds: 0.5,
            requests_per_second: 1000.0,
            latency_ms: Percentiles::from(&h),
            connect_ms: Percentiles::from(&Histogram::new()),
            server_cpu_ms_per_request: 0.25,
            client_cpu_ms_per_request: 0.5,
            server_cores: 0.25,
            client_cores: 0.5,
            server_threads: vec![ThreadCpu {
                name: "mdm-store-write".into(),
                cores: 0.5,
            }],
            server_memory: MemoryFigures {
                rss_mib: 40.0,
                peak_rss_mib: 41.0,
            },
            database_mib: 12.0,
            error_samples: vec!["device X: boom".into()],
        }
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let p = round().latency_ms;
        assert!((p.p50 - 5.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.2, "{p:?}");
        assert!((p.max - 10.0).abs() < 1e-9);
    }

    #[test]
    fn text_has_one_figure_per_line_and_the_targets() {
        let report = Report {
            date: "2025-01-01T00:00:00Z".into(),
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.1".into(),
            },
            settings: Settings {
                devices: 100,
                concurrency: 8,
                workers: 2,
                commands_per_round: 4,
                rounds: 1,
                enroll_concurrency: 4,
                key_pool: 4,
                request_type: "ProfileList".into(),
                rss_devices: None,
            },
            enrollment: EnrollmentFigures {
                devices: 100,
                wall_seconds: 2.0,
                devices_per_second: 50.0,
                server_cpu_ms_per_device: 3.5,
                client_cpu_ms_per_device: 6.0,
                server_memory: MemoryFigures {
                    rss_mib: 30.0,
                    peak_rss_mib: 31.0,
                },
            },
            rounds: vec![round()],
            large: None,
        };
        let text = report.to_text();
        for needle in [
            "throughput                        1000 requests/s",
            "server CPU per request            0.250 ms (0.25 cores busy)",
            "server CPU per enrollment         3.50 ms",
            "400 of 400 deliveries Acknowledged",
            "target <= 0.1 ms",
            "target < 250 MB",
            "! device X: boom",
            "server cores by thread            mdm-store-write 0.50",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rounds"][0]["requests"], 500);
        assert_eq!(json["enrollment"]["server_cpu_ms_per_device"], 3.5);
        assert!(json["large"].is_null());
    }
}
