//! The store on its own thread. The event loop hands it the core's disk operations and goes on
//! reading sockets, delivering what is already durable and gathering the next batch while a
//! write and its fsync run; completions come back through a channel and a `mio::Waker`. The
//! core keeps one write in flight per shard, so the next write carries everything that arrived
//! meanwhile, from every connection (group commit across loop turns).
//!
//! Handing an op over costs a wake-up each way (a futex and an eventfd: measured +25 % of
//! server CPU at a steady 5,000 msgs/s, where there is nothing to overlap). So while the loop
//! is lightly loaded and the thread has nothing queued, the loop carries the op out itself.

use crate::store::{Completion, Store};
use ferry_core::node::DiskOp;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

pub struct DiskWorker {
    ops: mpsc::SyncSender<DiskOp>,
    done: mpsc::Receiver<Completion>,
    /// Set by the worker when it has sent completions the loop has not taken yet, so that a
    /// burst of them wakes the loop once.
    unread: Arc<AtomicBool>,
    /// The store, locked by whoever carries out an op: the thread, or the loop when the thread
    /// has nothing queued (so ops still run in the order they were submitted).
    store: Arc<Mutex<Store>>,
    /// Ops handed to the thread, and how many of those it has carried out.
    handed: u64,
    carried_out: Arc<AtomicU64>,
}

impl DiskWorker {
    /// Moves `store` to a thread of its own. `queue_max` bounds the operations waiting for it:
    /// the core bounds what it has in flight (a write per shard, `fetches_pending_max` reads,
    /// the odd truncate or delete), so the loop never waits on a full queue in practice.
    pub fn start(store: Store, waker: mio::Waker, queue_max: usize) -> std::io::Result<DiskWorker> {
        let (ops, jobs) = mpsc::sync_channel::<DiskOp>(queue_max);
        let (finished, done) = mpsc::channel();
        let unread = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&unread);
        let store = Arc::new(Mutex::new(store));
        let carried_out = Arc::new(AtomicU64::new(0));
        let (shared, counter) = (Arc::clone(&store), Arc::clone(&carried_out));
        std::thread::Builder::new().name("disk".into()).spawn(move || {
            for op in jobs {
                let completion = shared.lock().unwrap_or_else(|_| died()).apply(op);
                counter.fetch_add(1, Ordering::Release);
                let Some(completion) = completion else { continue };
                if finished.send(completion).is_err() {
                    return;
                }
                if !flag.swap(true, Ordering::AcqRel) {
                    // A failed wake leaves the completion for the loop's next turn.
                    let _ = waker.wake();
                }
            }
        })?;
        Ok(DiskWorker { ops, done, unread, store, handed: 0, carried_out })
    }

    /// Carries `op` out at once when the loop is `lightly_loaded` and the thread has nothing
    /// queued (its completion is returned); otherwise queues it for the disk thread.
    pub fn submit(&mut self, op: DiskOp, lightly_loaded: bool) -> Option<Completion> {
        if lightly_loaded && self.carried_out.load(Ordering::Acquire) == self.handed {
            return self.store.lock().unwrap_or_else(|_| died()).apply(op);
        }
        self.handed += 1;
        match self.ops.try_send(op) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(op)) => {
                tracing::warn!("the disk queue is full: the event loop waits for the disk");
                self.ops.send(op).unwrap_or_else(|_| died());
            }
            Err(mpsc::TrySendError::Disconnected(_)) => died(),
        }
        None
    }

    /// The operations finished since the last call, in the order the disk carried them out.
    pub fn completions(&mut self) -> Vec<Completion> {
        self.unread.store(false, Ordering::Release);
        let finished: Vec<Completion> = self.done.try_iter().collect();
        finished
    }
}

/// The disk thread is gone (it panicked): nothing can be made durable any more. Stop loudly,
/// as for any disk error the design cannot recover from; a restart recovers from the log.
fn died() -> ! {
    tracing::error!("stopping: the disk thread died");
    std::process::exit(crate::server::STOP_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Config;
    use std::time::Duration;

    #[test]
    fn operations_run_on_the_disk_thread_in_order_and_their_completions_wake_the_loop() {
        let dir = std::env::temp_dir().join(format!("ferry-disk-worker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _, _) = Store::open(&dir, Config::default(), 0).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(7)).unwrap();
        let mut worker = DiskWorker::start(store, waker, 8).unwrap();
        assert!(worker.submit(DiskOp::Write { token: 1, segment: 1, offset: 0, data: b"hello".to_vec(), create: true, sync: true }, false).is_none());
        assert!(worker.submit(DiskOp::Read { token: 2, segment: 1, offset: 0, len: 5 }, false).is_none());
        let mut events = mio::Events::with_capacity(4);
        let mut finished = Vec::new();
        while finished.len() < 2 {
            poll.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
            assert!(events.iter().any(|e| e.token() == mio::Token(7)), "woken by the disk thread");
            finished.extend(worker.completions());
        }
        assert!(matches!(&finished[0], Completion::Write { token: 1, result: Ok(()) }), "{finished:?}");
        assert!(matches!(&finished[1], Completion::Read { token: 2, result: Ok(bytes) } if bytes == b"hello"), "the read follows the write: {finished:?}");
        // Nothing queued and a lightly loaded loop: carried out at once, on the loop's thread.
        let at_once = worker.submit(DiskOp::Read { token: 3, segment: 1, offset: 1, len: 4 }, true);
        assert!(matches!(&at_once, Some(Completion::Read { token: 3, result: Ok(bytes) }) if bytes == b"ello"), "{at_once:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
