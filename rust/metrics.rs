//! Agreement between two labelings: adjusted Rand index and normalised mutual information
//! (arithmetic mean normalisation, as scikit-learn's defaults).

use std::collections::HashMap;

type Contingency = (HashMap<(i64, i64), f64>, HashMap<i64, f64>, HashMap<i64, f64>);

fn contingency(a: &[i64], b: &[i64]) -> Contingency {
    let mut nij = HashMap::new();
    let mut ai = HashMap::new();
    let mut bj = HashMap::new();
    let small = |v: &[i64]| v.iter().all(|&x| (0..256).contains(&x));
    if small(a) && small(b) {
        // cluster labels are small: count in a dense table, one pass, no hashing
        let mut t = vec![0u64; 256 * 256];
        for (&x, &y) in a.iter().zip(b) {
            t[(x as usize) << 8 | y as usize] += 1;
        }
        for (i, &c) in t.iter().enumerate() {
            if c > 0 {
                let (x, y) = ((i >> 8) as i64, (i & 255) as i64);
                nij.insert((x, y), c as f64);
                *ai.entry(x).or_insert(0.0) += c as f64;
                *bj.entry(y).or_insert(0.0) += c as f64;
            }
        }
        return (nij, ai, bj);
    }
    for (&x, &y) in a.iter().zip(b) {
        *nij.entry((x, y)).or_insert(0.0) += 1.0;
        *ai.entry(x).or_insert(0.0) += 1.0;
        *bj.entry(y).or_insert(0.0) += 1.0;
    }
    (nij, ai, bj)
}

fn comb2(n: f64) -> f64 {
    n * (n - 1.0) / 2.0
}

fn sorted_values<K: Ord + Copy>(m: &HashMap<K, f64>) -> Vec<f64> {
    let mut kv: Vec<(K, f64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
    kv.sort_by_key(|x| x.0);
    kv.into_iter().map(|(_, v)| v).collect()
}

/// Adjusted Rand index of two labelings of the same items (1 for identical partitions,
/// about 0 for independent ones; 1 by convention when both are a single cluster).
pub fn adjusted_rand_index(a: &[i64], b: &[i64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (nij, ai, bj) = contingency(&a[..n as usize], &b[..n as usize]);
    let sum_ij: f64 = sorted_values(&nij).iter().map(|&v| comb2(v)).sum();
    let sum_a: f64 = sorted_values(&ai).iter().map(|&v| comb2(v)).sum();
    let sum_b: f64 = sorted_values(&bj).iter().map(|&v| comb2(v)).sum();
    let total = comb2(n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = sum_a * sum_b / total;
    let max = 0.5 * (sum_a + sum_b);
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

fn entropy(counts: &[f64], n: f64) -> f64 {
    counts.iter().filter(|&&c| c > 0.0).map(|&c| -(c / n) * (c / n).ln()).sum()
}

/// Normalised mutual information (arithmetic normalisation); 1 when both labelings are a
/// single cluster.
pub fn normalized_mutual_info(a: &[i64], b: &[i64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n == 0.0 {
        return 1.0;
    }
    let (nij, ai, bj) = contingency(&a[..n as usize], &b[..n as usize]);
    if ai.len() == 1 && bj.len() == 1 {
        return 1.0;
    }
    let mut keys: Vec<(i64, i64)> = nij.keys().copied().collect();
    keys.sort();
    let mut mi = 0.0;
    for key in keys {
        let v = nij[&key];
        mi += v / n * (n * v / (ai[&key.0] * bj[&key.1])).ln();
    }
    let ha = entropy(&sorted_values(&ai), n);
    let hb = entropy(&sorted_values(&bj), n);
    let denom = 0.5 * (ha + hb);
    if denom <= 0.0 {
        return 1.0;
    }
    (mi / denom).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_permuted_partitions() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [5, 5, 3, 3, 9, 9];
        assert!((adjusted_rand_index(&a, &b) - 1.0).abs() < 1e-12);
        assert!((normalized_mutual_info(&a, &b) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn dense_and_hashed_counts_agree() {
        let a: Vec<i64> = (0..1000).map(|i| i % 7).collect();
        let b: Vec<i64> = (0..1000).map(|i| (i * 3) % 5).collect();
        let big: Vec<i64> = b.iter().map(|v| v + 1000).collect();
        assert_eq!(adjusted_rand_index(&a, &b), adjusted_rand_index(&a, &big));
        assert_eq!(normalized_mutual_info(&a, &b), normalized_mutual_info(&a, &big));
    }

    #[test]
    fn known_value() {
        // scikit-learn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((v - 0.571_428_571_428_571_5).abs() < 1e-12);
        // normalized_mutual_info_score([0,0,1,1],[0,0,1,2]) = 0.8
        let m = normalized_mutual_info(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((m - 0.8).abs() < 1e-12, "{m}");
    }
}
