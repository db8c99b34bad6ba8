//! Stable mapping from user labels (strings or integers) to dense ids.
//!
//! Ids are handed out in order of first appearance and never change; the mapping is part of
//! the saved state, so a resumed run maps every label to the same id.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A user label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

/// Labels of one batch, one per prompt. For `Ints`, -1 means unknown; for `Keys`, `None`
/// (or `Int(-1)`) means unknown.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// No labels given: every prompt unknown (groups) or one shared value (sources).
    Absent,
    Ints(&'a [i64]),
    Keys(&'a [Option<Key>]),
}

impl Labels<'_> {
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    pub fn len(&self) -> Option<usize> {
        match self {
            Labels::Absent => None,
            Labels::Ints(v) => Some(v.len()),
            Labels::Keys(v) => Some(v.len()),
        }
    }
}

/// Label -> dense id, in order of first appearance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LabelMap {
    pub names: Vec<Key>,
    #[serde(skip)]
    index: HashMap<Key, u32>,
    #[serde(skip)]
    small: Vec<u32>,
}

const SMALL: usize = 1 << 16;

impl LabelMap {
    /// Rebuilds the lookup tables after deserialisation.
    pub fn rebuild(&mut self) -> Result<()> {
        self.index.clear();
        self.small.clear();
        let names = std::mem::take(&mut self.names);
        for k in names {
            if self.index.contains_key(&k) {
                return Err(CoreError::State(format!("label {k} appears twice in the label map")));
            }
            self.insert(k);
        }
        Ok(())
    }

    fn insert(&mut self, k: Key) -> u32 {
        let id = self.names.len() as u32;
        if let Key::Int(i) = k {
            if (0..SMALL as i64).contains(&i) {
                if self.small.len() <= i as usize {
                    self.small.resize(i as usize + 1, u32::MAX);
                }
                self.small[i as usize] = id;
            }
        }
        self.index.insert(k.clone(), id);
        self.names.push(k);
        id
    }

    #[inline]
    fn id_of_int(&mut self, i: i64) -> u32 {
        if (0..SMALL as i64).contains(&i) {
            if let Some(&id) = self.small.get(i as usize) {
                if id != u32::MAX {
                    return id;
                }
            }
        }
        match self.index.get(&Key::Int(i)) {
            Some(&id) => id,
            None => self.insert(Key::Int(i)),
        }
    }

    fn id_of(&mut self, k: &Key) -> u32 {
        match k {
            Key::Int(i) => self.id_of_int(*i),
            Key::Str(_) => match self.index.get(k) {
                Some(&id) => id,
                None => self.insert(k.clone()),
            },
        }
    }

    /// Dense ids of a batch of labels (-1 = unknown). `n` is the expected count.
    pub fn map(&mut self, labels: Labels<'_>, n: usize, arg: &'static str) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        self.map_into(labels, n, arg, 1, &mut out)?;
        Ok(out)
    }

    /// [`LabelMap::map`] into `out` (resized to `n`), on up to `threads` threads. Integer
    /// labels that are all known already (the common case after the first step) are looked
    /// up in parallel; otherwise new labels get ids in order of first appearance.
    pub fn map_into(
        &mut self,
        labels: Labels<'_>,
        n: usize,
        arg: &'static str,
        threads: usize,
        out: &mut Vec<i32>,
    ) -> Result<()> {
        if let Some(len) = labels.len() {
            if len != n {
                return Err(CoreError::shape(
                    arg,
                    format!("has {len} entries but the batch has {n} prompts (one label per prompt)"),
                ));
            }
        }
        out.resize(n, -1);
        match labels {
            Labels::Absent => out.fill(-1),
            Labels::Ints(v) => {
                if !self.lookup_known(v, out, threads) {
                    self.map_ints(v, out, arg)?;
                }
            }
            Labels::Keys(v) => {
                for (o, k) in out.iter_mut().zip(v) {
                    *o = match k {
                        None | Some(Key::Int(-1)) => -1,
                        Some(Key::Int(i)) if *i < -1 => {
                            return Err(CoreError::value(
                                arg,
                                format!("integer label {i} is negative; use -1 (or None) for unknown"),
                            ))
                        }
                        Some(k) => self.id_of(k) as i32,
                    };
                }
            }
        }
        Ok(())
    }

    /// Ids of integer labels, inserting new ones in order of first appearance.
    fn map_ints(&mut self, v: &[i64], out: &mut [i32], arg: &'static str) -> Result<()> {
        let mut last = (i64::MIN, 0i32);
        for (o, &i) in out.iter_mut().zip(v) {
            *o = if i == -1 {
                -1
            } else if i < -1 {
                return Err(CoreError::value(
                    arg,
                    format!("integer label {i} is negative; use -1 (or None) for unknown"),
                ));
            } else if i == last.0 {
                last.1
            } else {
                let id = self.id_of_int(i) as i32;
                last = (i, id);
                id
            };
        }
        Ok(())
    }

    /// Ids of integer labels through the small-integer table only, in parallel chunks;
    /// false (with `out` partly written) when some label is not there (new, negative or
    /// large): the caller then takes the sequential path.
    fn lookup_known(&self, v: &[i64], out: &mut [i32], threads: usize) -> bool {
        const C: usize = 1 << 16;
        let ok = crate::pool::map_chunks_mut(out, C, threads, |c, o| self.lookup_small(&v[c * C..], o));
        ok.iter().all(|&b| b)
    }

    /// The ids of `v[..out.len()]` (-1 stays -1) when every label is already in the
    /// small-integer table, as [`LabelMap::map_into`] would give them; false (with `out`
    /// partly written) otherwise: then `map_into` must map the batch.
    pub fn lookup_small(&self, v: &[i64], out: &mut [i32]) -> bool {
        let small = &self.small;
        #[cfg(target_arch = "x86_64")]
        if small.len() <= 16 && v.len() >= out.len() && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available; the lengths are checked.
            return unsafe { lookup16(small, &v[..out.len()], out) };
        }
        crate::pool::simd(|| lookup_rows(small, v, out))
    }

    pub fn name(&self, id: u32) -> String {
        self.names[id as usize].to_string()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// [`LabelMap::lookup_small`] for a table of at most 16 ids, 16 labels at a time: the
/// ids come from one in-register permutation instead of a load per label.
///
/// # Safety
/// AVX-512F must be available; `small.len() <= 16` and `v.len() == out.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lookup16(small: &[u32], v: &[i64], out: &mut [i32]) -> bool {
    use std::arch::x86_64::*;
    assert!(small.len() <= 16 && v.len() == out.len());
    let mut tab = [u32::MAX; 16];
    tab[..small.len()].copy_from_slice(small);
    let t = _mm512_loadu_si512(tab.as_ptr() as *const _);
    let (len, none) = (_mm512_set1_epi64(small.len() as i64), _mm512_set1_epi64(-1));
    // u32::MAX (a gap in the table) and -1 (an unknown label) have the same bits
    let minus1 = _mm512_set1_epi32(-1);
    let mut bad: __mmask16 = 0;
    let n16 = v.len() / 16 * 16;
    for c in (0..n16).step_by(16) {
        let x = [
            _mm512_loadu_si512(v.as_ptr().add(c) as *const _),
            _mm512_loadu_si512(v.as_ptr().add(c + 8) as *const _),
        ];
        // in the table: 0 <= label < len (as unsigned); unknown: -1
        let inr =
            _mm512_cmplt_epu64_mask(x[0], len) as u16 | (_mm512_cmplt_epu64_mask(x[1], len) as u16) << 8;
        let unk =
            _mm512_cmpeq_epi64_mask(x[0], none) as u16 | (_mm512_cmpeq_epi64_mask(x[1], none) as u16) << 8;
        let idx = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm512_cvtepi64_epi32(x[0])),
            _mm512_cvtepi64_epi32(x[1]),
        );
        let ids = _mm512_permutexvar_epi32(idx, t);
        let known = inr & _mm512_cmpneq_epi32_mask(ids, minus1);
        bad |= !(known | unk);
        _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, _mm512_mask_mov_epi32(ids, unk, minus1));
    }
    (bad == 0) & lookup_rows(small, &v[n16..], &mut out[n16..])
}

/// [`LabelMap::lookup_small`], one label at a time.
#[inline(always)]
fn lookup_rows(small: &[u32], v: &[i64], out: &mut [i32]) -> bool {
    let mut ok = true;
    for (o, &i) in out.iter_mut().zip(v) {
        let id = small.get(i as usize).copied().unwrap_or(u32::MAX);
        let unknown = i == -1;
        ok &= unknown | (id != u32::MAX);
        *o = if unknown { -1 } else { id as i32 };
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_survive_a_round_trip() {
        let mut m = LabelMap::default();
        let a = m.map(Labels::Ints(&[5, 3, -1, 5, 70_000]), 5, "g").unwrap();
        assert_eq!(a, vec![0, 1, -1, 0, 2]);
        let keys = [Some(Key::Str("f".into())), None, Some(Key::Int(3))];
        assert_eq!(m.map(Labels::Keys(&keys), 3, "g").unwrap(), vec![3, -1, 1]);
        let json = serde_json::to_string(&m).unwrap();
        let mut back: LabelMap = serde_json::from_str(&json).unwrap();
        back.rebuild().unwrap();
        assert_eq!(back.map(Labels::Ints(&[70_000, 5]), 2, "g").unwrap(), vec![2, 0]);
        assert_eq!(back.name(3), "f");
    }

    #[test]
    fn parallel_lookup_equals_the_sequential_mapping() {
        let v: Vec<i64> = (0..300_000).map(|i| [7, -1, 3, 70_000, 0][(i * 7919) % 5]).collect();
        let mut a = LabelMap::default();
        let first = a.map(Labels::Ints(&v), v.len(), "g").unwrap();
        assert_eq!(&first[..5], &[0, 1, 2, 3, -1]);
        // all known now: the parallel lookup (70_000 is outside the small table: fallback)
        let mut b = a.clone();
        let mut out = Vec::new();
        b.map_into(Labels::Ints(&v), v.len(), "g", 2, &mut out).unwrap();
        assert_eq!(out, first);
        let small: Vec<i64> = v.iter().map(|&i| i.min(7)).collect();
        let mut out2 = vec![9; 3];
        b.map_into(Labels::Ints(&small), small.len(), "g", 2, &mut out2).unwrap();
        assert_eq!(out2, a.map(Labels::Ints(&small), small.len(), "g").unwrap());
        // a new label in a later chunk: sequential ids in order of first appearance
        let mut w = small.clone();
        w[250_000] = 11;
        w[260_000] = 12;
        let got = b.clone().map(Labels::Ints(&w), w.len(), "g").unwrap();
        b.map_into(Labels::Ints(&w), w.len(), "g", 2, &mut out2).unwrap();
        assert_eq!(out2, got);
        assert_eq!((got[250_000], got[260_000]), (4, 5));
        assert!(b.map_into(Labels::Ints(&[0, -3]), 2, "g", 2, &mut out2).is_err());
    }

    #[test]
    fn wrong_length_and_negative_labels_are_errors() {
        let mut m = LabelMap::default();
        assert!(m.map(Labels::Ints(&[1, 2]), 3, "groups").is_err());
        let e = m.map(Labels::Ints(&[-4]), 1, "groups").unwrap_err();
        assert!(e.to_string().contains("groups"));
    }

    /// The 16-entry permutation gives the label-by-label lookup's ids and verdict: every
    /// table size, gaps in the table, -1, other negatives, labels past the table, odd lengths.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lookup16_equals_the_scalar_lookup() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut rng = crate::rng::SplitMix64::new(77);
        for len in 1..=16usize {
            let small: Vec<u32> =
                (0..len as u32).map(|j| if j % 5 == 3 { u32::MAX } else { j * 7 }).collect();
            for n in [0usize, 5, 16, 37, 200] {
                for odd in [0.0, 0.02] {
                    let v: Vec<i64> = (0..n)
                        .map(|_| {
                            let u = rng.uniform();
                            if u < odd {
                                [-2i64, 16, 1 << 40, i64::MIN][rng.below(4)]
                            } else if u < 0.1 {
                                -1
                            } else {
                                let j = rng.below(len) as i64;
                                if small[j as usize] == u32::MAX {
                                    0
                                } else {
                                    j
                                }
                            }
                        })
                        .collect();
                    let (mut a, mut b) = (vec![0i32; n], vec![0i32; n]);
                    // SAFETY: AVX-512F checked above; equal lengths
                    let ok16 = unsafe { lookup16(&small, &v, &mut a) };
                    let ok = lookup_rows(&small, &v, &mut b);
                    assert_eq!(ok16, ok, "len {len} n {n}");
                    if ok {
                        assert_eq!(a, b, "len {len} n {n}");
                    }
                }
            }
        }
    }
}
