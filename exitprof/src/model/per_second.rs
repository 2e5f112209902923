//! [`PerSecond`]: a rate, as `--json` carries it.
use serde::{Deserialize, Serialize};

/// Events per second, to a thousandth: `1.5` is three events in two
/// seconds. Never NaN (an empty interval gives 0).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PerSecond(pub f64);

impl PartialEq for PerSecond {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for PerSecond {}

impl PerSecond {
    /// `count` per second over `interval_ns`.
    #[must_use]
    pub fn of(count: u64, interval_ns: u64) -> Self {
        if interval_ns == 0 {
            return Self(0.0);
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "a rate for people and dashboards: 53 bits are plenty"
        )]
        let per_s = count as f64 * 1e9 / interval_ns as f64;
        Self((per_s * 1000.0).round() / 1000.0)
    }

    /// Whole events per second, rounded, for tables.
    #[must_use]
    pub fn rounded(self) -> u64 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a rate is finite and not negative; `as` saturates"
        )]
        let n = self.0.round() as u64;
        n
    }
}
