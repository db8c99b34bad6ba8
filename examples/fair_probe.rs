//! Times FairAdvantage("robust") steps on binary f32 rewards, 4 sources x 8 groups, all
//! prompts labelled: `cargo run --release --example fair_probe -- PROMPTS REPS THREADS [GRADED]`
//! (GRADED = 1: 0/1 plus 0.2 for 70 % of the rollouts, the step's general path). With
//! `PAUSE_MS=150` every step follows a sleep, as in a training loop (the threads idle between
//! calls); without it the steps run back to back. `SPIN_MS=150` spins the calling thread
//! instead of sleeping (the pool's other core idles), `SPIN2_MS=150` spins a second thread
//! too (both cores stay busy): which of them brings the slowdown after a pause tells whose
//! idleness causes it. `ALL=1` prints every step's time too. The arrays are in transparent
//! huge pages, as numpy's are in `benches/compare.py`; `SMALL_PAGES=1` keeps them in 4 KiB ones.
use _core::config::FairConfig;
use _core::fair::FairAdvantage;
use _core::labels::Labels;
use _core::rng::SplitMix64;
use std::time::Instant;

#[path = "shared/pages.rs"]
mod pages;
use pages::in_pages;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (p, reps, threads) = (
        a.first().copied().unwrap_or(1_000_000),
        a.get(1).copied().unwrap_or(20),
        a.get(2).copied().unwrap_or(1),
    );
    let g = 10;
    let mut rng = SplitMix64::new(2);
    let graded = a.get(3) == Some(&1);
    let r: Vec<f32> = (0..p * g)
        .map(|_| {
            let v = (rng.uniform() < 0.6) as u8 as f32;
            if graded && rng.uniform() < 0.7 {
                v + 0.2
            } else {
                v
            }
        })
        .collect();
    let src: Vec<i64> = (0..p).map(|_| rng.below(4) as i64).collect();
    let grp: Vec<i64> = (0..p).map(|_| rng.below(8) as i64).collect();
    let huge = std::env::var("SMALL_PAGES").is_err();
    let (r, src, grp) = (in_pages(r, huge), in_pages(src, huge), in_pages(grp, huge));
    let out = in_pages(vec![0.0f32; p * g], huge);
    let (w, c) = (in_pages(vec![0.0f64; p], huge), in_pages(vec![0i64; p], huge));
    let cfg = FairConfig { n_threads: Some(threads), ..FairConfig::robust() };
    let mut fa = FairAdvantage::new(cfg).unwrap();
    let mut ts = Vec::new();
    let ms = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok());
    let (pause, spin, spin2) = (ms("PAUSE_MS"), ms("SPIN_MS"), ms("SPIN2_MS"));
    let busy = |ms: u64| {
        let t = Instant::now();
        while t.elapsed().as_millis() < u128::from(ms) {
            std::hint::spin_loop();
        }
    };
    for _ in 0..reps + 1 {
        if let Some(ms) = pause {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = spin {
            busy(ms);
        }
        if let Some(ms) = spin2 {
            let other = std::thread::spawn(move || busy(ms));
            busy(ms);
            other.join().unwrap();
        }
        let t0 = Instant::now();
        fa.step_into(r, g, Labels::Ints(src), Labels::Ints(grp), Labels::Absent, out, w, c).unwrap();
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.remove(0);
    if std::env::var("ALL").is_ok() {
        println!("steps (ms): {}", ts.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(" "));
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "p {p} threads {threads}: median {:.3} ms, {:.2} ns/prompt",
        ts[ts.len() / 2],
        ts[ts.len() / 2] * 1e6 / p as f64
    );
}
