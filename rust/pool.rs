//! Parallel execution with results that do not depend on the thread count.
//!
//! Work is cut into fixed-size chunks (the size never depends on the number of threads);
//! each chunk produces a partial result, and partials are combined sequentially in chunk
//! order. The calling thread and up to `n_threads - 1` helper tasks on rayon's one global
//! pool take the chunks one at a time (see [`share`]); which thread ran a chunk never
//! matters.

use crate::error::{CoreError, Result};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Rows per chunk of every chunked pass.
pub const CHUNK: usize = 4096;

/// Checks a user's `n_threads` and turns it into a split count (`None` = the whole pool).
pub fn resolve_threads(n_threads: Option<usize>) -> Result<usize> {
    match n_threads {
        None => Ok(rayon::current_num_threads().max(1)),
        Some(0) => Err(CoreError::value("n_threads", "must be >= 1 or None, got 0")),
        Some(n) => Ok(n),
    }
}

/// Maps `f` over `n_chunks` chunk indices on at most `threads` threads; results in chunk order.
pub fn map_chunks<R, F>(n_chunks: usize, threads: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize) -> R + Sync + Send,
{
    if threads <= 1 || n_chunks <= 1 {
        return (0..n_chunks).map(f).collect();
    }
    let slots: Vec<Slot<R>> = (0..n_chunks).map(|_| Mutex::new(None)).collect();
    share(n_chunks, threads, &|i| put(&slots[i], f(i)));
    collect(slots)
}

/// Like [`map_chunks`] but each chunk also gets its own disjoint slice of `out`
/// (`out` is cut into pieces of `per_chunk` elements).
pub fn map_chunks_mut<O, R, F>(out: &mut [O], per_chunk: usize, threads: usize, f: F) -> Vec<R>
where
    O: Send,
    R: Send,
    F: Fn(usize, &mut [O]) -> R + Sync + Send,
{
    let n_chunks = out.len().div_ceil(per_chunk.max(1));
    if threads <= 1 || n_chunks <= 1 {
        return out.chunks_mut(per_chunk.max(1)).enumerate().map(|(i, c)| f(i, c)).collect();
    }
    let pieces: Vec<Slot<&mut [O]>> = out.chunks_mut(per_chunk.max(1)).map(|c| Mutex::new(Some(c))).collect();
    let slots: Vec<Slot<R>> = (0..n_chunks).map(|_| Mutex::new(None)).collect();
    share(n_chunks, threads, &|i| put(&slots[i], f(i, take(&pieces[i]))));
    collect(slots)
}

/// Like [`map_chunks_mut`] over two outputs cut in step: chunk `i` gets
/// `a[i*per*ga .. (i+1)*per*ga]` and `b[i*per .. (i+1)*per]`.
pub fn map_chunks_mut2<A, B, R, F>(
    a: &mut [A],
    b: &mut [B],
    per: usize,
    ga: usize,
    threads: usize,
    f: F,
) -> Vec<R>
where
    A: Send,
    B: Send,
    R: Send,
    F: Fn(usize, &mut [A], &mut [B]) -> R + Sync + Send,
{
    let per = per.max(1);
    let n_chunks = b.len().div_ceil(per);
    let pairs = a.chunks_mut(per * ga).zip(b.chunks_mut(per));
    if threads <= 1 || n_chunks <= 1 {
        return pairs.enumerate().map(|(i, (x, y))| f(i, x, y)).collect();
    }
    let pieces: Vec<Slot<(&mut [A], &mut [B])>> = pairs.map(|p| Mutex::new(Some(p))).collect();
    let slots: Vec<Slot<R>> = (0..n_chunks).map(|_| Mutex::new(None)).collect();
    share(n_chunks, threads, &|i| {
        let (x, y) = take(&pieces[i]);
        put(&slots[i], f(i, x, y))
    });
    collect(slots)
}

/// A chunk's input piece or result, handed between threads.
type Slot<T> = Mutex<Option<T>>;

fn put<R>(slot: &Slot<R>, r: R) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
}

fn take<T>(piece: &Slot<T>) -> T {
    piece.lock().unwrap_or_else(|e| e.into_inner()).take().expect("each chunk is taken once")
}

fn collect<R>(slots: Vec<Slot<R>>) -> Vec<R> {
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every chunk ran"))
        .collect()
}

/// Runs `body(i)` once for every chunk `i < n_chunks`, on the calling thread and on up to
/// `threads - 1` helpers from rayon's pool.
///
/// Each of these workers owns an equal run of consecutive chunks and takes them from the
/// front; one that runs out takes the others' remaining chunks from the back, one at a
/// time. The calling thread works from the start instead of waiting for the pool: on a
/// machine whose idle cores take milliseconds to wake (a virtual machine after a pause), a
/// helper that starts late only ends up with fewer chunks, and one that has not started
/// when the chunks run out is called off rather than waited for. Which thread runs a chunk
/// never changes its result, and the callers combine results in chunk order.
fn share(n_chunks: usize, threads: usize, body: &(dyn Fn(usize) + Sync)) {
    let workers = threads.min(n_chunks);
    // worker w owns chunks [start, end), packed as start << 32 | end
    let runs: Vec<AtomicU64> = (0..workers)
        .map(|w| AtomicU64::new(pack(n_chunks * w / workers, n_chunks * (w + 1) / workers)))
        .collect();
    let work = |me: usize| {
        while let Some(i) = take_chunk(&runs[me], true) {
            body(i);
        }
        for other in (1..workers).map(|o| (me + o) % workers) {
            while let Some(i) = take_chunk(&runs[other], false) {
                body(i);
            }
        }
    };
    let work: &(dyn Fn(usize) + Sync) = &work;
    // SAFETY: only the trait object's lifetime bound changes (same pointer, same vtable). The
    // pointer is dereferenced only by a helper between its successful claim and its `DONE`
    // store, and `Helpers::drop` (which runs before this frame is left, by return or by
    // unwinding) calls off every helper that has not claimed and waits for every one that has.
    let job: Job = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(work) };
    let home = cpu::current();
    let helpers = Helpers((1..workers).map(|w| Helper::spawn(job, w, home)).collect());
    if workers > 1 {
        // a helper just woken onto this CPU runs now (and moves off it, see `cpu`) instead
        // of waiting out this thread's time slice, milliseconds; elsewhere this costs a
        // system call
        std::thread::yield_now();
    }
    work(0);
    drop(helpers); // joins; re-raises a helper's panic
}

fn pack(start: usize, end: usize) -> u64 {
    let (s, e) = (u32::try_from(start), u32::try_from(end));
    (u64::from(s.expect("fewer than 2^32 chunks")) << 32) | u64::from(e.expect("fewer than 2^32 chunks"))
}

/// The first (`front`) or last chunk left in a worker's run, taken out of it.
fn take_chunk(run: &AtomicU64, front: bool) -> Option<usize> {
    let mut v = run.load(Ordering::Relaxed);
    loop {
        let (s, e) = ((v >> 32) as usize, (v & 0xffff_ffff) as usize);
        if s >= e {
            return None;
        }
        let (next, i) = if front { (pack(s + 1, e), s) } else { (pack(s, e - 1), e - 1) };
        match run.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(i),
            Err(now) => v = now,
        }
    }
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CALLED_OFF: u8 = 3;

/// The work of a [`share`] call, as a pointer that may outlive it (see the protocol there).
type Job = *const (dyn Fn(usize) + Sync + 'static);

/// One helper task's handshake with the thread that spawned it.
struct Helper {
    state: AtomicU8,
    job: Job,
    /// Which run of chunks it owns.
    worker: usize,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `job` points to a `Sync` closure (callable from any thread) and is dereferenced
// only under the claim protocol of [`share`]; the other fields are Send + Sync.
unsafe impl Send for Helper {}
unsafe impl Sync for Helper {}

impl Helper {
    /// `home`: the CPU of the spawning thread, which works through the chunks itself.
    fn spawn(job: Job, worker: usize, home: Option<usize>) -> Arc<Helper> {
        let h = Arc::new(Helper { state: AtomicU8::new(IDLE), job, worker, panic: Mutex::new(None) });
        let task = Arc::clone(&h);
        rayon::spawn(move || {
            if task.state.compare_exchange(IDLE, RUNNING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // a helper woken onto the spawner's own CPU would only take turns with it
                if let Some(c) = home.filter(|&c| cpu::current() == Some(c)) {
                    cpu::move_off(c);
                }
                // SAFETY: claimed, so the spawning `share` call waits for `DONE` before its
                // frame (which owns the closure) is left.
                let run = || unsafe { (*task.job)(task.worker) };
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    *task.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
                task.state.store(DONE, Ordering::Release);
            }
        });
        h
    }
}

/// The helpers of one [`share`] call; dropping it joins them.
struct Helpers(Vec<Arc<Helper>>);

impl Drop for Helpers {
    fn drop(&mut self) {
        let mut panic = None;
        for h in &self.0 {
            if h.state.compare_exchange(IDLE, CALLED_OFF, Ordering::Acquire, Ordering::Acquire).is_ok() {
                continue;
            }
            // running: it finishes the chunk it holds (the chunks have run out)
            let mut spins = 0u32;
            while h.state.load(Ordering::Acquire) != DONE {
                if spins < 1000 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            panic = panic.or_else(|| h.panic.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        if let Some(p) = panic {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// Runs `f` compiled for the widest vector unit the CPU has (AVX-512, AVX2, or the
/// baseline). The closure is inlined into a function with those target features, so its
/// loops vectorise wider; the arithmetic, and so the result, is the same on every path.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { simd_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_order_is_kept() {
        let a = map_chunks(100, 1, |i| i * 2);
        let b = map_chunks(100, 2, |i| i * 2);
        assert_eq!(a, b);
        assert_eq!(a[99], 198);
    }

    /// A helper on its spawner's CPU steps to another one it may use, and its set of allowed
    /// CPUs is as before afterwards.
    #[cfg(target_os = "linux")]
    #[test]
    fn move_off_moves_and_restores_the_allowed_cpus() {
        let allowed = || {
            // SAFETY: a zeroed bit set read with its own size
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
                (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect::<Vec<_>>()
            }
        };
        std::thread::spawn(move || {
            let before = allowed();
            let here = cpu::current().expect("sched_getcpu works on Linux");
            let moved = cpu::move_off(here);
            assert_eq!(allowed(), before);
            if before.len() >= 2 {
                let to = moved.expect("moved");
                assert!(to != here && before.contains(&to), "{here} -> {to} of {before:?}");
            } else {
                assert_eq!(moved, None);
            }
            // a CPU it may not use, or one past any set: nothing happens
            assert_eq!(cpu::move_off(100_000), None);
            assert_eq!(allowed(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(resolve_threads(Some(0)).is_err());
        assert_eq!(resolve_threads(Some(3)).unwrap(), 3);
    }

    #[test]
    fn mut_chunks_cover_everything() {
        let mut v = vec![0usize; 10_001];
        let sizes = map_chunks_mut(&mut v, 4096, 2, |i, c| {
            c.iter_mut().for_each(|x| *x = i);
            c.len()
        });
        assert_eq!(sizes, vec![4096, 4096, 1809]);
        assert_eq!(v[10_000], 2);
    }

    #[test]
    fn more_threads_than_the_pool_still_covers_every_chunk_once() {
        let mut a = vec![0u32; 1000];
        let mut b = vec![0u8; 100];
        let r = map_chunks_mut2(&mut a, &mut b, 10, 10, 64, |i, x, y| {
            x.iter_mut().for_each(|v| *v += 1);
            y.iter_mut().for_each(|v| *v += 1);
            i
        });
        assert_eq!(r, (0..10).collect::<Vec<_>>());
        assert!(a.iter().all(|&v| v == 1) && b.iter().all(|&v| v == 1));
    }

    /// Inside a one-thread pool nobody can run the helper: the caller must do every chunk
    /// and call the helper off instead of waiting for it (waiting would never end).
    #[test]
    fn a_helper_that_never_starts_is_called_off() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a pool");
            let v = pool.install(|| map_chunks(50, 2, |i| i * 3));
            tx.send(v).expect("the test waits");
        });
        let v = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("map_chunks returned");
        assert_eq!(v, (0..50).map(|i| i * 3).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_in_any_chunk_reaches_the_caller() {
        for bad in [0, 1, 37, 63] {
            let r = std::panic::catch_unwind(|| {
                map_chunks(64, 2, |i| {
                    if i == bad {
                        panic!("chunk {i}");
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    i
                })
            });
            let msg = r.expect_err("the panic comes back");
            assert_eq!(
                msg.downcast_ref::<String>().map(String::as_str),
                Some(format!("chunk {bad}").as_str())
            );
        }
        // the pool still works afterwards
        assert_eq!(map_chunks(8, 2, |i| i).len(), 8);
    }
}

/// Where a helper runs. On some virtual machines the kernel wakes a helper onto the CPU of
/// the thread that woke it even though the other CPUs are idle (a vCPU that idled long
/// enough reads as preempted and is passed over), and the two take turns on one CPU until
/// the next load balance, milliseconds later: the step then runs at one thread's speed.
mod cpu {
    /// The CPU the calling thread runs on (None where unknown).
    pub fn current() -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: no arguments; returns -1 on failure.
            let c = unsafe { libc::sched_getcpu() };
            usize::try_from(c).ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Moves the calling thread to another CPU it may run on, then allows `cpu` again: its
    /// set of allowed CPUs ends as it began. Does nothing if `cpu` is its only one or the
    /// set cannot be read. Returns the CPU it ran on in between (None if it did not move).
    pub fn move_off(cpu: usize) -> Option<usize> {
        #[cfg(target_os = "linux")]
        // SAFETY: `set` is a plain bit set owned here, passed with its own size; `cpu` is
        // checked against the set's size before the CPU_* helpers index it.
        unsafe {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut set) != 0
                || cpu >= 8 * size
                || !libc::CPU_ISSET(cpu, &set)
                || libc::CPU_COUNT(&set) < 2
            {
                return None;
            }
            let mut others = set;
            libc::CPU_CLR(cpu, &mut others);
            // the kernel moves the thread before the first call returns; the second only
            // widens the set again, so the thread stays where it now is
            if libc::sched_setaffinity(0, size, &others) != 0 {
                return None;
            }
            let now = current();
            libc::sched_setaffinity(0, size, &set);
            now
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = cpu;
            None
        }
    }
}
