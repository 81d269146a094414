//! One timer for every tokio connection of the process.
//!
//! A connection's deadlines (keepalive ping, pong timeout, close timeout, the bounds on
//! flushing and lingering) come from the core's `poll_timeout`. Giving each connection a
//! tokio `Sleep` for them cost an allocation of 112 B and an entry in tokio's timer wheel per
//! connection, for a timer that fires once every `ping_interval`. Instead, every connection
//! has a slot in one process-wide table and pushes `(deadline, slot)` into one heap; one
//! thread (`sockeye-timer`, started on first use) sleeps until the earliest deadline and
//! wakes the slots whose deadlines passed. A connection costs a 16-byte slot and a 16-byte
//! heap entry; the thread wakes once per deadline, never per connection per tick.
//!
//! A thread rather than a tokio task: it serves every runtime of the process (servers,
//! clients, the hyper integration, tests with a runtime each) and cannot die with one of
//! them. It counts real time (`std::time::Instant`), and so do the connections it serves
//! (their core reads `std::time::Instant::now()`): tokio's paused clock
//! (`tokio::time::pause`) does not move connection timers. Deadlines are whole milliseconds from the process's first use, rounded up, so a
//! wake never comes before the deadline it was asked for (tokio's `Sleep` has the same
//! resolution).
//!
//! Entries are never removed from the heap: a connection that needs an earlier wake pushes
//! another entry, and one whose deadline moved later keeps the early entry, which then
//! wakes it once for nothing (it pushes the later one). A slot freed and reused may likewise
//! get a wake meant for its previous owner. Both are spurious wakes, which every future must
//! tolerate anyway; the heap holds at most a few entries per connection (one per deadline
//! that moved earlier), each gone once its time comes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::AssertUnwindSafe;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

/// No deadline.
const NONE: u64 = u64::MAX;

struct Wheel {
    state: Mutex<State>,
    /// Signalled when an entry earlier than the one the thread sleeps until is pushed.
    wake: Condvar,
    /// Milliseconds are counted from here.
    base: Instant,
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// What to wake, per slot; `None` for a free slot.
    slots: Vec<Option<Waker>>,
    free: Vec<u32>,
    /// The deadline the thread waits for; `NONE` while it waits for nothing, 0 while it is
    /// not waiting (it looks at the heap before it waits again, so no signal is needed).
    waiting_for: u64,
    started: bool,
}

static WHEEL: OnceLock<Wheel> = OnceLock::new();

fn wheel() -> &'static Wheel {
    WHEEL.get_or_init(|| Wheel {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        base: Instant::now(),
    })
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every section leaves the state consistent; a panic (out of memory) cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whole milliseconds since `base`, rounded down: a deadline `d` has passed when
    /// `now_ms() >= d`.
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// `at` in milliseconds since `base`, rounded up (so that the wake is not early). A
    /// deadline beyond `u64` milliseconds (a configuration of centuries) is as good as never
    /// and stays just short of `NONE`.
    fn to_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        let ms = since.as_millis();
        let ms = if since.subsec_nanos() % 1_000_000 != 0 {
            ms + 1
        } else {
            ms
        };
        u64::try_from(ms).map_or(NONE - 1, |ms| ms.min(NONE - 1))
    }

    /// Starts the thread if it is not running. A failure to start (out of threads) is
    /// logged and tried again with the next deadline; wakes wait for it.
    fn start(&'static self, st: &mut State) {
        if st.started {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("sockeye-timer".into())
            .stack_size(256 * 1024)
            .spawn(move || self.run());
        match spawned {
            Ok(_) => st.started = true,
            Err(e) => tracing::error!(target: "sockeye", "cannot start the timer thread: {e}"),
        }
    }

    fn run(&self) {
        let mut due: Vec<Waker> = Vec::new();
        let mut st = self.lock();
        loop {
            st.waiting_for = 0;
            let now = self.now_ms();
            while let Some(&Reverse((at, slot))) = st.heap.peek() {
                if at > now {
                    break;
                }
                st.heap.pop();
                if let Some(Some(waker)) = st.slots.get(slot as usize) {
                    due.push(waker.clone());
                }
            }
            if !due.is_empty() {
                // Wake outside the lock: a waker may run code that registers a deadline.
                drop(st);
                for waker in due.drain(..) {
                    // A waker that panics must not take the process's timer with it.
                    let woken = std::panic::catch_unwind(AssertUnwindSafe(|| waker.wake()));
                    if woken.is_err() {
                        tracing::error!(target: "sockeye", "a waker panicked in the timer thread");
                    }
                }
                st = self.lock();
                continue;
            }
            // Keep a heap emptied after a burst of connections from holding its peak.
            if st.heap.is_empty() && st.heap.capacity() > 1024 {
                st.heap.shrink_to(1024);
            }
            st = match st.heap.peek() {
                Some(&Reverse((at, _))) => {
                    st.waiting_for = at;
                    let wait = Duration::from_millis(at - now);
                    self.wake
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => {
                    st.waiting_for = NONE;
                    self.wake.wait(st).unwrap_or_else(|e| e.into_inner())
                }
            };
        }
    }
}

/// A connection's place in the process's timer: at most one deadline wanted at a time.
///
/// Not `Clone`: dropping it frees the slot.
pub(crate) struct Timer {
    slot: u32,
    /// The deadline the owner wants to be woken for (ms), `NONE` if none.
    wanted: u64,
    /// The earliest entry this timer has in the heap that has not been seen to fire (ms),
    /// `NONE` if none: a deadline at or after it needs no new entry.
    armed: u64,
}

impl Timer {
    /// A timer that wakes `target` when a deadline set on it passes.
    pub(crate) fn new(target: Waker) -> Timer {
        let wheel = wheel();
        let mut st = wheel.lock();
        let slot = match st.free.pop() {
            Some(slot) => {
                st.slots[slot as usize] = Some(target);
                slot
            }
            None => {
                st.slots.push(Some(target));
                (st.slots.len() - 1) as u32
            }
        };
        Timer {
            slot,
            wanted: NONE,
            armed: NONE,
        }
    }

    /// Wants a wake at `at` (replacing the deadline wanted before), or none.
    pub(crate) fn set(&mut self, at: Option<Instant>) {
        let wheel = wheel();
        self.wanted = at.map_or(NONE, |at| wheel.to_ms(at));
        self.arm(wheel);
    }

    /// Makes sure an entry at or before the deadline wanted is in the heap. One that is
    /// there already (earlier) serves: when it fires, [`fired`](Self::fired) finds the
    /// deadline still ahead and arms it then.
    fn arm(&mut self, wheel: &'static Wheel) {
        if self.wanted >= self.armed {
            return;
        }
        self.armed = self.wanted;
        let mut st = wheel.lock();
        st.heap.push(Reverse((self.wanted, self.slot)));
        wheel.start(&mut st);
        let signal = self.wanted < st.waiting_for;
        drop(st);
        if signal {
            wheel.wake.notify_one();
        }
    }

    /// Whether a deadline is wanted.
    #[cfg(test)]
    pub(crate) fn is_set(&self) -> bool {
        self.wanted != NONE
    }

    /// After a wake from the timer: whether the deadline wanted has passed (it is then
    /// cleared). If it has not (an early wake), the timer arms itself for it again.
    pub(crate) fn fired(&mut self) -> bool {
        let wheel = wheel();
        let now = wheel.now_ms();
        if self.armed <= now {
            self.armed = NONE;
        }
        if self.wanted <= now {
            self.wanted = NONE;
            true
        } else {
            // Woken early (a deadline that moved later, or a slot's previous owner).
            self.arm(wheel);
            false
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let wheel = wheel();
        let mut st = wheel.lock();
        // The waker may hold the last reference to the connection's state: dropped after
        // the lock, not under it, where every other connection's timer would wait for it.
        let target = st.slots[self.slot as usize].take();
        st.free.push(self.slot);
        // Entries left in the heap for this slot wake nobody (or its next owner, once).
        if st.free.len() == st.slots.len() && st.slots.capacity() > 1024 {
            st.slots.clear();
            st.free.clear();
            st.slots.shrink_to(1024);
            st.free.shrink_to(1024);
        }
        drop(st);
        drop(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts its wakes and remembers when the last one came.
    struct Probe {
        wakes: AtomicUsize,
        last: Mutex<Option<Instant>>,
        cv: Condvar,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            *self.last.lock().unwrap() = Some(Instant::now());
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.cv.notify_all();
        }
    }

    fn probe() -> (Arc<Probe>, Timer) {
        let p = Arc::new(Probe {
            wakes: AtomicUsize::new(0),
            last: Mutex::new(None),
            cv: Condvar::new(),
        });
        let timer = Timer::new(Waker::from(p.clone()));
        (p, timer)
    }

    /// Waits (at most 5 s) for the probe's `n`th wake; returns when it came.
    fn wait_for(p: &Probe, n: usize) -> Instant {
        let mut last = p.last.lock().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while p.wakes.load(Ordering::SeqCst) < n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no wake number {n} within 5 s");
            last = p.cv.wait_timeout(last, left).unwrap().0;
        }
        last.expect("woken")
    }

    #[test]
    fn wakes_come_at_or_after_their_deadline_and_not_before() {
        let (p, mut timer) = probe();
        let start = Instant::now();
        let at = start + Duration::from_millis(30);
        timer.set(Some(at));
        assert!(timer.is_set());
        let woke = wait_for(&p, 1);
        assert!(woke >= at, "woken {:?} early", at - woke);
        assert!(timer.fired(), "the deadline passed");
        assert!(!timer.is_set());
        assert!(!timer.fired(), "cleared once seen");
    }

    #[test]
    fn an_earlier_deadline_overtakes_a_later_one() {
        let (p, mut timer) = probe();
        let start = Instant::now();
        timer.set(Some(start + Duration::from_secs(3600)));
        timer.set(Some(start + Duration::from_millis(20)));
        let woke = wait_for(&p, 1);
        assert!(woke < start + Duration::from_secs(60));
        assert!(timer.fired());
    }

    #[test]
    fn a_deadline_moved_later_wakes_early_once_then_on_time() {
        let (p, mut timer) = probe();
        let start = Instant::now();
        timer.set(Some(start + Duration::from_millis(20)));
        let later = start + Duration::from_millis(120);
        timer.set(Some(later));
        // The early entry still fires: not due yet, and it says so.
        let first = wait_for(&p, 1);
        if first < later {
            assert!(!timer.fired(), "woken early, the deadline has not passed");
            // The timer arms itself again for the deadline still wanted.
            let second = wait_for(&p, 2);
            assert!(second >= later);
        }
        assert!(timer.fired());
    }

    #[test]
    fn a_deadline_centuries_ahead_is_never_due() {
        let wheel = wheel();
        let far = Instant::now() + Duration::from_secs(u64::MAX >> 2);
        assert_eq!(wheel.to_ms(far), NONE - 1);
        let (_, mut timer) = probe();
        timer.set(Some(far));
        assert!(!timer.fired());
        // Rounding: up to the next millisecond, exact milliseconds unchanged.
        let base = wheel.base;
        assert_eq!(wheel.to_ms(base + Duration::from_millis(7)), 7);
        assert_eq!(wheel.to_ms(base + Duration::from_micros(7001)), 8);
        assert_eq!(wheel.to_ms(base), 0);
    }

    #[test]
    fn a_deadline_cleared_is_not_reported() {
        let (p, mut timer) = probe();
        timer.set(Some(Instant::now() + Duration::from_millis(10)));
        timer.set(None);
        wait_for(&p, 1);
        assert!(!timer.fired(), "nothing was wanted any more");
    }

    #[test]
    fn many_timers_each_get_their_own_wake() {
        let start = Instant::now();
        let probes: Vec<_> = (0..200u64)
            .map(|i| {
                let (p, mut t) = probe();
                t.set(Some(start + Duration::from_millis(5 + (i * 7) % 50)));
                (p, t)
            })
            .collect();
        for (p, mut t) in probes {
            wait_for(&p, 1);
            assert!(t.fired());
        }
    }

    #[test]
    fn a_dropped_timer_wakes_nobody() {
        let (p, mut timer) = probe();
        timer.set(Some(Instant::now() + Duration::from_millis(20)));
        drop(timer);
        let (q, mut other) = probe();
        let at = Instant::now() + Duration::from_millis(60);
        other.set(Some(at));
        // If `other` took the freed slot, the dropped timer's entry wakes it once, early.
        let mut n = 1;
        while wait_for(&q, n) < at {
            assert!(!other.fired());
            n += 1;
        }
        assert!(other.fired());
        assert_eq!(
            p.wakes.load(Ordering::SeqCst),
            0,
            "a dropped timer was woken"
        );
    }
}
