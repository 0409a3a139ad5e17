//! The scoped worker pool: a function over a list of items on up to `n`
//! threads of the caller's scope, results in the items' order.
//!
//! Ingest decodes the chunks of a batch with it, the writer encodes the
//! columns of a row group, and a lookup searches the days of its window.
//! Items differ widely in cost (a sealed string column against a constant
//! key id; a busy day against an empty one), so threads take the next item
//! from a shared counter instead of a fixed share. Each item sits in a slot
//! of its own that exactly one thread claims, by index.
//!
//! The threads are scoped: they borrow from the caller and are joined
//! before [`map`] returns, so nothing outlives the call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A worker thread panicked; the caller's error type says what that means
/// for its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

/// `f` over `items` on up to `threads` threads (at least one; one runs on
/// the caller's thread). The first error wins; a panic becomes
/// `E::from(Panicked)`.
pub fn map<T, R, E>(items: Vec<T>, threads: usize, f: impl Fn(T) -> Result<R, E> + Sync) -> Result<Vec<R>, E>
where
    T: Send,
    R: Send,
    E: Send + From<Panicked>,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|item| Mutex::new(Some(item))).collect();
    let next = AtomicUsize::new(0);
    let lane = || {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(index) else { break };
            let item = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(item) = item else { continue };
            done.push((index, f(item)?));
        }
        Ok(done)
    };
    // One lane runs on the caller's thread: a query of a few milliseconds
    // does not pay for a thread it could have been.
    let lanes: Vec<Result<Vec<(usize, R)>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(lane)).collect();
        let own =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(lane)).unwrap_or_else(|_| Err(E::from(Panicked)));
        let mut lanes: Vec<_> =
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(E::from(Panicked)))).collect();
        lanes.push(own);
        lanes
    });
    let mut results = Vec::with_capacity(slots.len());
    for lane in lanes {
        results.extend(lane?);
    }
    results.sort_unstable_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Error {
        Odd(u32),
        Panicked,
    }

    impl From<Panicked> for Error {
        fn from(_: Panicked) -> Self {
            Error::Panicked
        }
    }

    #[test]
    fn results_come_in_the_items_order_whatever_the_threads() {
        for threads in [1, 2, 7, 100] {
            let squares = map((0..50u32).collect(), threads, |n| Ok::<_, Error>(n * n)).unwrap();
            assert_eq!(squares, (0..50u32).map(|n| n * n).collect::<Vec<_>>(), "{threads} threads");
        }
    }

    #[test]
    fn an_error_or_a_panic_is_the_result() {
        let odd = map(vec![2u32, 4, 5, 6], 2, |n| if n % 2 == 0 { Ok(n) } else { Err(Error::Odd(n)) });
        assert_eq!(odd, Err(Error::Odd(5)));
        let panicked = map(vec![1u32, 2, 3], 2, |n| if n == 2 { panic!("worker") } else { Ok::<_, Error>(n) });
        assert_eq!(panicked, Err(Error::Panicked));
    }

    #[test]
    fn items_may_borrow_mutably_from_the_caller() {
        let mut totals = vec![0u64; 8];
        map(totals.iter_mut().enumerate().collect(), 3, |(i, total)| {
            *total += i as u64;
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(totals, (0..8).collect::<Vec<u64>>());
    }
}
