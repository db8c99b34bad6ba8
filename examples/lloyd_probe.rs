//! Times Lloyd fits on k overlapping Gaussian blobs (f32, d = 10, k = 3, the first k rows as
//! the initial centres): `cargo run --release --example lloyd_probe -- N REPS THREADS ALGO`
//! (ALGO = lloyd, hamerly, or pass: one assignment pass of the kernel alone, one thread). Prints the median time per iteration and the iteration count.
//! With `X_F32=path` the rows are read from a raw little-endian f32 file of d = 10 columns
//! instead, N ignored (e.g. the blobs of `benches/compare.py`, written with numpy's `tofile`).
use _core::kernels::{assign_chunk, Assign, Isa};
use _core::kmeans::{lloyd, Algorithm};
use _core::rng::SplitMix64;
use std::time::Instant;

#[path = "shared/pages.rs"]
mod pages;
use pages::in_pages;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = a.first().map_or(1_000_000, |s| s.parse().unwrap());
    let reps: usize = a.get(1).map_or(7, |s| s.parse().unwrap());
    let threads: usize = a.get(2).map_or(1, |s| s.parse().unwrap());
    let algo_name = a.get(3).map_or("lloyd", |s| s.as_str());
    let (d, k) = (10, 3);
    let mut rng = SplitMix64::new(7);
    // blob centres ~ U(-0.85, 0.85) (spread ~0.5) per feature, unit-ish noise (sum of uniforms)
    let centres: Vec<f64> = (0..k * d).map(|_| 1.7 * rng.uniform() - 0.85).collect();
    let x: Vec<f32> = match std::env::var("X_F32") {
        Ok(path) => {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("X_F32={path}: {e}"));
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Err(_) => synthetic(&mut rng, &centres, n, d, k),
    };
    let x: &[f32] = in_pages(x, true);
    let n = x.len() / d;
    let init: Vec<f64> = x[..k * d].iter().map(|&v| v as f64).collect();
    if algo_name == "pass" {
        // one assignment + accumulation pass over all rows on this thread, the kernel alone
        let c32: Vec<f32> = init.iter().map(|&v| v as f32).collect();
        let mut labels = vec![0u32; n];
        let (mut sums, mut counts) = (vec![0.0f64; k * d], vec![0u64; k]);
        let mut ts = Vec::new();
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let mut job = Assign {
                x,
                d,
                centres: &c32,
                labels: &mut labels,
                sums: &mut sums,
                counts: &mut counts,
                inertia: 0.0,
                changed: 0,
                check_finite: false,
                non_finite: false,
            };
            assign_chunk(Isa::detect(), &mut job);
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ts.remove(0);
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{:.3} ms/pass (median of {reps})", ts[reps / 2]);
        return;
    }
    let algo: Algorithm = algo_name.parse().unwrap();
    let mut per_iter = Vec::new();
    let mut iters = 0;
    for _ in 0..reps + 1 {
        let t0 = Instant::now();
        let res = lloyd(x, d, init.clone(), 50, 0.0, algo, threads).unwrap();
        per_iter.push(t0.elapsed().as_secs_f64() * 1e3 / res.n_iter as f64);
        iters = res.n_iter;
    }
    per_iter.remove(0);
    per_iter.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{:.3} ms/iter (median of {reps}), {iters} iterations", per_iter[reps / 2]);
}

/// k blobs around `centres` with unit-ish noise (a sum of three uniforms), `n` rows.
fn synthetic(rng: &mut SplitMix64, centres: &[f64], n: usize, d: usize, k: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|_| {
            let j = rng.below(k);
            (0..d)
                .map(|t| {
                    let noise: f64 = (0..3).map(|_| rng.uniform()).sum::<f64>() * 2.0 - 3.0;
                    (centres[j * d + t] + noise) as f32
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
