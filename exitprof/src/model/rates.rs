//! Rates: counts per second over a snapshot's interval, so that `--json`
//! and `top --once` carry what the TUI shows. They are derived from
//! `count` and `interval_ns` (the counts stay the truth) and filled in by
//! [`Snapshot::fill_rates`] wherever a snapshot is made.
use super::{
    events::{EventKind, EventVisitorMut},
    per_second::PerSecond,
    snapshot::Snapshot,
};

impl Snapshot {
    /// Sets every rate from the counts and `interval_ns`. `exits_per_s`
    /// stays absent where `kvm_exit` cannot fire (PVM): a rate of zero
    /// there would claim that nothing exited.
    pub fn fill_rates(&mut self) {
        /// Sets each row's rate, and sums the events.
        struct Fill(u64, u64);
        impl EventVisitorMut for Fill {
            fn rows<K: EventKind>(&mut self, rows: &mut [K]) {
                for row in rows {
                    row.set_rate(PerSecond::of(row.count(), self.0));
                    self.1 += row.count();
                }
            }
        }
        let interval = self.interval_ns;
        for row in &mut self.exits {
            row.rate_per_s = PerSecond::of(row.count, interval);
        }
        for site in &mut self.sites {
            site.rate_per_s = PerSecond::of(site.count, interval);
        }
        let mut fill = Fill(interval, 0);
        self.events.each_mut(&mut fill);
        for row in &mut self.events.userspace_exit {
            row.rate_per_s = PerSecond::of(row.count, interval);
        }
        self.events_per_s = PerSecond::of(fill.1, interval);
        self.exits_per_s = self
            .vmexit_available
            .then(|| PerSecond::of(self.total_exits(), interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, CpuidRow};

    #[test]
    fn rates_per_second_to_a_thousandth() {
        assert_eq!(PerSecond::of(3, 2_000_000_000), PerSecond(1.5));
        assert_eq!(PerSecond::of(1, 3_000_000_000), PerSecond(0.333));
        assert_eq!(PerSecond::of(5, 0), PerSecond(0.0));
        assert_eq!(PerSecond::of(2_500, 1_000_000_000).rounded(), 2_500);
        assert_eq!(PerSecond(0.5).rounded(), 1);
    }

    #[test]
    fn pvm_has_event_rates_and_no_exit_rate() {
        let mut s = Snapshot::empty(Backend::Pvm);
        s.interval_ns = 500_000_000;
        s.events.cpuid = vec![CpuidRow {
            leaf: 0x4242,
            subleaf: Some(0),
            count: 100,
            ..CpuidRow::default()
        }];
        s.fill_rates();
        assert_eq!(s.events.cpuid[0].rate_per_s, PerSecond(200.0));
        assert_eq!(s.events_per_s, PerSecond(200.0));
        assert_eq!(s.exits_per_s, None);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("exits_per_s").is_none(), "{json}");
        assert_eq!(json["events_per_s"], 200.0);
    }
}
