//! `cargo bench`: throughput of the numeric core, in bytes of input so results read in GB/s
//! (compare with the memory bound in BENCHMARKS.md).

use _core::advantages::{group_advantages, Scale};
use _core::config::FairConfig;
use _core::fair::FairAdvantage;
use _core::kmeans::{kmeans_plusplus, lloyd, Algorithm};
use _core::labels::Labels;
use _core::rng::SplitMix64;
use _core::select_k::{select_k, SelectKParams};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn blobs(n: usize, d: usize, k: usize) -> Vec<f32> {
    let mut r = SplitMix64::new(1);
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = r.below(k) as f32 * 2.0;
        for _ in 0..d {
            x.push(c + (r.uniform() as f32 - 0.5));
        }
    }
    x
}

fn binary_rewards(n: usize) -> Vec<f32> {
    let mut r = SplitMix64::new(2);
    (0..n).map(|_| (r.uniform() < 0.6) as u8 as f32).collect()
}

fn bench_kmeans(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmeans");
    g.sample_size(10);
    for &(n, d, k) in &[(1_000_000usize, 10usize, 3usize), (1_000_000, 4, 8)] {
        let x = blobs(n, d, k);
        let init: Vec<f64> = x[..k * d].iter().map(|&v| v as f64).collect();
        g.throughput(Throughput::Bytes((n * d * 4) as u64));
        g.bench_function(format!("lloyd_iteration/n={n}/d={d}/k={k}"), |b| {
            b.iter(|| {
                lloyd(black_box(&x), d, init.clone(), 1, 0.0, Algorithm::Lloyd, rayon::current_num_threads())
                    .unwrap()
            })
        });
        // whole fits to convergence from the first k rows (throughput: one pass over x per
        // fit); these blobs are well separated, so the fits take few iterations
        for (name, algo) in [("lloyd_fit", Algorithm::Lloyd), ("hamerly_fit", Algorithm::Hamerly)] {
            g.bench_function(format!("{name}/n={n}/d={d}/k={k}"), |b| {
                b.iter(|| {
                    lloyd(black_box(&x), d, init.clone(), 50, 0.0, algo, rayon::current_num_threads())
                        .unwrap()
                })
            });
        }
        g.bench_function(format!("kmeans_plusplus/n={n}/d={d}/k={k}"), |b| {
            b.iter(|| kmeans_plusplus(black_box(&x), d, k, 0, rayon::current_num_threads()).unwrap())
        });
    }
    let x = blobs(100_000, 8, 3);
    let p = SelectKParams { k_max: 3, tol: 0.1, seed: 0, max_iter: 300, kmeans_tol: 1e-4, threads: 2 };
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    g.bench_function("select_k/n=100000/d=8/k_max=3", |b| {
        b.iter(|| select_k(black_box(&x), 8, &p, &[]).unwrap())
    });
    g.finish();
}

fn bench_advantages(c: &mut Criterion) {
    let mut g = c.benchmark_group("advantages");
    g.sample_size(10);
    let n = 10_000_000usize;
    let gs = 10usize;
    let r = binary_rewards(n);
    let mut out = vec![0.0f32; n];
    g.throughput(Throughput::Bytes((n * 4) as u64));
    g.bench_function("group_advantages/N=1e7/G=10", |b| {
        b.iter(|| {
            group_advantages(black_box(&r), gs, Scale::Group, 1e-4, rayon::current_num_threads(), &mut out)
                .unwrap()
        })
    });
    let p = n / gs;
    let mut rng = SplitMix64::new(3);
    let src: Vec<i64> = (0..p).map(|_| rng.below(4) as i64).collect();
    let grp: Vec<i64> = (0..p).map(|_| rng.below(8) as i64).collect();
    let mut fa = FairAdvantage::new(FairConfig::robust()).unwrap();
    g.bench_function("fair_advantage_labelled/N=1e7/G=10", |b| {
        b.iter(|| {
            fa.step(black_box(&r), gs, Labels::Ints(&src), Labels::Ints(&grp), Labels::Absent, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_kmeans, bench_advantages);
criterion_main!(benches);
