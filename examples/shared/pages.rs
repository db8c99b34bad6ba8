//! Memory for the probes' arrays.

/// `x` moved to memory advised for transparent huge pages when `huge` (as numpy does for
/// arrays of 4 MB and up, so that a probe sees the TLB behaviour of `benches/compare.py`);
/// left where it is otherwise. Never freed (the probes keep their arrays to the end).
pub fn in_pages<T: Copy>(x: Vec<T>, huge: bool) -> &'static mut [T] {
    #[cfg(target_os = "linux")]
    if huge && !x.is_empty() {
        const TWO_MB: usize = 1 << 21;
        let bytes = std::mem::size_of_val(&x[..]).div_ceil(TWO_MB) * TWO_MB;
        let layout = std::alloc::Layout::from_size_align(bytes, TWO_MB).unwrap();
        // SAFETY: the layout has a non-zero size and T's alignment divides 2 MB; all x.len()
        // values are copied in before the slice is made.
        unsafe {
            let p = std::alloc::alloc(layout) as *mut T;
            assert!(!p.is_null());
            libc::madvise(p as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            std::ptr::copy_nonoverlapping(x.as_ptr(), p, x.len());
            return std::slice::from_raw_parts_mut(p, x.len());
        }
    }
    x.leak()
}
