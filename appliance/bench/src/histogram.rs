//! A log-linear latency histogram in microseconds (the HdrHistogram idea, reduced to what
//! the bench needs): values below 128 µs are exact, larger ones fall in buckets no wider than
//! 1/64 of their value, so a percentile is off by less than 1.6 %. Memory is fixed whatever
//! the number of samples, and histograms from several worker processes merge exactly.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`]: the relative precision is 1/`SUB`.
const SUB: u64 = 64;
/// `log2(SUB)`.
const SUB_BITS: u32 = 6;
/// Buckets needed to cover every `u64`.
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// Latency samples in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "HistogramWire", from = "HistogramWire")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

/// The serialised form: only the non-empty buckets, as `(index, count)` pairs.
#[derive(Serialize, Deserialize)]
struct HistogramWire {
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
    buckets: Vec<(usize, u64)>,
}

impl From<Histogram> for HistogramWire {
    fn from(h: Histogram) -> Self {
        HistogramWire {
            count: h.count,
            min: h.min,
            max: h.max,
            sum: h.sum,
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i, *c))
                .collect(),
        }
    }
}

impl From<HistogramWire> for Histogram {
    fn from(w: HistogramWire) -> Self {
        let mut counts = vec![0; BUCKETS];
        // An index out of range can only come from a corrupted worker line; such counts are
        // dropped rather than trusted.
        for (i, c) in w.buckets {
            if let Some(slot) = counts.get_mut(i) {
                *slot += c;
            }
        }
        Histogram {
            counts,
            count: w.count,
            min: w.min,
            max: w.max,
            sum: w.sum,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) - SUB;
    (LINEAR + u64::from(shift - 1) * SUB + sub) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let k = i - LINEAR;
    let shift = k / SUB + 1;
    let low = (k % SUB + SUB) << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one sample of `micros` microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.count += 1;
        self.min = self.min.min(micros);
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    /// Records one duration (saturating at `u64::MAX` µs).
    pub fn record(&mut self, d: Duration) {
        self.record_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample in µs (0 when empty).
    pub fn max_micros(&self) -> u64 {
        self.max
    }

    /// Smallest sample in µs (0 when empty).
    pub fn min_micros(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Arithmetic mean in µs (0 when empty).
    pub fn mean_micros(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at or below which `p` percent of the samples lie (nearest rank), reported
    /// as the top of its bucket but never above the largest sample. 0 when empty.
    pub fn percentile_micros(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.count as f64).ceil() as u64;
        let rank = rank.clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = None;
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            assert!(bucket_high(b) >= v, "{v} above the top of its bucket");
            if v >= LINEAR {
                // Relative width of the bucket is at most 1/64.
                assert!((bucket_high(b) - v) as f64 <= v as f64 / SUB as f64, "{v}");
            } else {
                assert_eq!(bucket_high(b), v);
            }
            if let Some((pv, pb)) = prev {
                if v == pv + 1 {
                    assert!(b == pb || b == pb + 1, "gap between {pv} and {v}");
                }
            }
            prev = Some((v, b));
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_uniform_sample() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record_micros(v);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.min_micros(), 1);
        assert_eq!(h.max_micros(), 10_000);
        assert!((h.mean_micros() - 5_000.5).abs() < 1e-9);
        for (p, exact) in [
            (50.0, 5_000u64),
            (90.0, 9_000),
            (99.0, 9_900),
            (99.9, 9_990),
        ] {
            let got = h.percentile_micros(p);
            assert!(got >= exact, "p{p}: {got} < {exact}");
            assert!(
                got as f64 <= exact as f64 * (1.0 + 1.0 / 64.0),
                "p{p}: {got}"
            );
        }
        assert_eq!(h.percentile_micros(100.0), 10_000);
        assert_eq!(h.percentile_micros(0.0), 1);
    }

    #[test]
    fn small_values_are_exact_and_outliers_show_in_the_tail() {
        let mut h = Histogram::new();
        for _ in 0..99 {
            h.record_micros(40);
        }
        h.record(Duration::from_millis(250));
        assert_eq!(h.percentile_micros(50.0), 40);
        assert_eq!(h.percentile_micros(99.0), 40);
        assert_eq!(h.percentile_micros(99.5), 250_000);
        assert_eq!(Histogram::new().percentile_micros(99.0), 0);
        assert_eq!(Histogram::new().min_micros(), 0);
    }

    #[test]
    fn merge_and_wire_round_trip() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 0..1000u64 {
            a.record_micros(v * 7);
            b.record_micros(v * 13 + 5);
        }
        let mut all = Histogram::new();
        for v in 0..1000u64 {
            all.record_micros(v * 7);
            all.record_micros(v * 13 + 5);
        }
        let json = serde_json::to_string(&b).unwrap();
        let b_back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(b_back, b);
        a.merge(&b_back);
        assert_eq!(a, all);
        // Only non-empty buckets travel.
        assert!(json.len() < 20_000, "{}", json.len());
    }
}
