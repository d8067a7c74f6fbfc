//! Admission of new connections per source address (`connections_per_ip_max`,
//! `connection_rate_per_ip`), on the core's clock: the shell asks before it answers a
//! handshake and says when an admitted connection is gone. An address is remembered while it
//! has connections open or its rate bucket is not full again, and forgotten after.

use crate::bucket::{Bucket, Limit};
use std::collections::HashMap;
use std::hash::Hash;

/// Admissions between two sweeps of the addresses no longer needed.
const SWEEP_EVERY: u32 = 1_024;

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address has `connections_per_ip_max` open.
    TooMany { open: u32 },
    /// Its address connects faster than `connection_rate_per_ip`: retry in this many ms.
    TooFast { retry_after_ms: u64 },
}

#[derive(Default)]
struct Address {
    open: u32,
    bucket: Bucket,
}

/// Per source address `A` (the shell's IP address type: the core opens no sockets).
pub struct Admission<A> {
    open_max: u32,
    rate: Limit,
    addresses: HashMap<A, Address>,
    since_sweep: u32,
}

impl<A: Hash + Eq> Admission<A> {
    /// `open_max` 0 and `rate.rate_per_s` 0: no limit.
    pub fn new(open_max: u32, rate: Limit) -> Admission<A> {
        Admission { open_max, rate, addresses: HashMap::new(), since_sweep: 0 }
    }

    /// A connection from `ip` asks to be served at `now_ns`.
    pub fn admit(&mut self, now_ns: u64, ip: A) -> Result<(), Refusal> {
        if self.open_max == 0 && self.rate.is_unlimited() {
            return Ok(());
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.addresses.retain(|_, address| address.open > 0 || !address.bucket.is_full(now_ns));
        }
        let address = self.addresses.entry(ip).or_default();
        if self.open_max > 0 && address.open >= self.open_max {
            return Err(Refusal::TooMany { open: address.open });
        }
        address.bucket.take(self.rate, now_ns).map_err(|wait_ns| Refusal::TooFast { retry_after_ms: wait_ns.div_ceil(1_000_000) })?;
        address.open += 1;
        Ok(())
    }

    /// An admitted connection from `ip` is gone.
    pub fn release(&mut self, now_ns: u64, ip: A) {
        let Some(address) = self.addresses.get_mut(&ip) else { return };
        address.open = address.open.saturating_sub(1);
        if address.open == 0 && address.bucket.is_full(now_ns) {
            self.addresses.remove(&ip);
        }
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_held_to_its_count_and_rate_and_forgotten_when_idle() {
        let (a, b) = ("10.0.0.1", "10.0.0.2");
        let mut admission = Admission::new(2, Limit { rate_per_s: 10, burst: 5 });
        assert_eq!((admission.admit(0, a), admission.admit(0, a)), (Ok(()), Ok(())));
        assert_eq!(admission.admit(0, a), Err(Refusal::TooMany { open: 2 }));
        assert_eq!(admission.admit(0, b), Ok(()), "another address is not held back");
        admission.release(0, a);
        assert_eq!(admission.admit(0, a), Ok(()), "a slot freed");
        admission.release(0, a);
        admission.release(0, a);
        admission.admit(0, a).unwrap();
        admission.release(0, a);
        admission.admit(0, a).unwrap();
        admission.release(0, a);
        // Five taken from a's bucket at once: the sixth waits for the rate.
        assert_eq!(admission.admit(0, a), Err(Refusal::TooFast { retry_after_ms: 100 }));
        admission.release(1_000_000_000, b);
        assert_eq!(admission.remembered(), 1, "b is forgotten once idle; a's bucket is not full yet");
        assert!(Admission::<&str>::new(0, Limit { rate_per_s: 0, burst: 0 }).admit(0, a).is_ok());
    }
}
