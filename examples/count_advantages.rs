//! One FairAdvantage step and one group_advantages call on 10^6 rewards: for instruction
//! counts under `valgrind --tool=callgrind` (BENCHMARKS.md, "Profiling").
use _core::advantages::{group_advantages, Scale};
use _core::config::FairConfig;
use _core::fair::FairAdvantage;
use _core::labels::Labels;
use _core::rng::SplitMix64;

fn main() {
    let (n, g) = (1_000_000usize, 10usize);
    let mut rng = SplitMix64::new(2);
    let r: Vec<f32> = (0..n).map(|_| (rng.uniform() < 0.6) as u8 as f32).collect();
    let src: Vec<i64> = (0..n / g).map(|_| rng.below(4) as i64).collect();
    let grp: Vec<i64> = (0..n / g).map(|_| rng.below(8) as i64).collect();
    let mut out = vec![0.0f32; n];
    group_advantages(&r, g, Scale::Group, 1e-4, 1, &mut out).unwrap();
    let cfg = FairConfig { n_threads: Some(1), ..FairConfig::robust() };
    let mut fa = FairAdvantage::new(cfg).unwrap();
    fa.step(&r, g, Labels::Ints(&src), Labels::Ints(&grp), Labels::Absent, &mut out).unwrap();
    println!("{}", out[0]);
}
