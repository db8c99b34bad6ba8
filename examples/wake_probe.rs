//! How fast two threads start after the process has been idle — the machine, not our code.
//!
//! `cargo run --release --example wake_probe -- MODE PAUSE_MS [REPS]` runs one two-thread job
//! REPS times (default 12), each after PAUSE_MS of idleness, and prints when each thread's half
//! started and ended (ms after the call) and the median call:
//! - `stream`: y = 2x + 1 over 30M f32 (120 MB read, 120 MB written), split in two halves;
//! - `fine`: the same in 64 pieces that either thread may take (prints how many thread 1 did);
//! - `compute`: the same split, but each half loops over 128 KB that stay in the core's cache;
//! - `one`: one half only, on the calling thread (the single-thread reference).
//!
//! With `SPIN=1` the pause is spent spinning on two threads instead of sleeping (both cores
//! busy, no memory traffic).
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Span = (f64, f64);

fn pause(ms: u64) {
    if std::env::var("SPIN").is_err() {
        std::thread::sleep(Duration::from_millis(ms));
        return;
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(ms) {
            std::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("stream", |s| s.as_str()).to_string();
    let pause_ms: u64 = args.get(1).map_or(150, |s| s.parse().expect("PAUSE_MS: an integer"));
    let reps: usize = args.get(2).map_or(12, |s| s.parse().expect("REPS: an integer"));
    let n = 30_000_000usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut y = vec![0f32; n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of 2 threads");
    let (mut calls, mut rows) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        if pause_ms > 0 {
            pause(pause_ms);
        }
        let t0 = Instant::now();
        let ms = || t0.elapsed().as_secs_f64() * 1e3;
        let stream = |xs: &[f32], ys: &mut [f32]| -> Span {
            let s = ms();
            ys.iter_mut().zip(xs).for_each(|(o, v)| *o = *v * 2.0 + 1.0);
            (s, ms())
        };
        let compute = |xs: &[f32], ys: &mut [f32]| -> Span {
            let s = ms();
            for _ in 0..3000 {
                ys[..32768].iter_mut().zip(&xs[..32768]).for_each(|(o, v)| *o = *o * 0.5 + *v);
            }
            (s, ms())
        };
        let (xa, xb) = x.split_at(n / 2);
        let (ya, yb) = y.split_at_mut(n / 2);
        let row = match mode.as_str() {
            "stream" => {
                let (a, b) = pool.install(|| rayon::join(|| stream(xa, ya), || stream(xb, yb)));
                format!("thread 0 {:5.2}..{:5.2}  thread 1 {:5.2}..{:5.2}", a.0, a.1, b.0, b.1)
            }
            "compute" => {
                let (a, b) = pool.install(|| rayon::join(|| compute(xa, ya), || compute(xb, yb)));
                format!("thread 0 {:5.2}..{:5.2}  thread 1 {:5.2}..{:5.2}", a.0, a.1, b.0, b.1)
            }
            "fine" => {
                let by_1 = AtomicUsize::new(0);
                pool.install(|| {
                    y.par_chunks_mut(n / 64).zip(x.par_chunks(n / 64)).for_each(|(ys, xs)| {
                        if rayon::current_thread_index() == Some(1) {
                            by_1.fetch_add(1, Ordering::Relaxed);
                        }
                        stream(xs, ys);
                    })
                });
                format!("thread 1 took {} of 64 pieces", by_1.into_inner())
            }
            "one" => {
                let a = stream(xa, ya);
                format!("thread 0 {:5.2}..{:5.2}", a.0, a.1)
            }
            m => panic!("MODE: stream, fine, compute or one, got {m:?}"),
        };
        if rep > 0 {
            calls.push(ms());
            rows.push(row);
        }
    }
    for (t, row) in calls.iter().zip(&rows).take(6) {
        println!("call {t:6.2} ms: {row}");
    }
    calls.sort_by(f64::total_cmp);
    println!("{mode}, pause {pause_ms} ms: median call {:.2} ms over {reps}", calls[reps / 2]);
}
