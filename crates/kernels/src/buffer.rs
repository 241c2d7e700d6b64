//! f32 buffers for weights and activations: cache-line aligned, on 2 MB pages when large.
//!
//! Packed weights are streamed from memory once per image at batch 1 (ResNet50: 100 MB).
//! With 4 KB pages every 32 KB weight slice crosses eight pages: eight TLB misses, each a
//! two-level page walk in a virtual machine, and a hardware prefetcher that stops at each
//! page edge. Buffers of 2 MB and more are therefore aligned to 2 MB and offered to the
//! kernel as transparent huge pages (`madvise`), before their pages are first touched.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Size (and alignment) of a huge page.
const HUGE_PAGE: usize = 2 << 20;
/// Alignment of smaller buffers: one cache line, so that vector loads never split lines.
const LINE: usize = 64;

/// A zero-initialised, aligned `[f32]` of fixed length.
pub(crate) struct AlignedBuf {
    ptr: NonNull<f32>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer owns its memory exclusively, like a Vec<f32>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only through Deref.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self::default();
        }
        let bytes = len * std::mem::size_of::<f32>();
        let align = if bytes >= HUGE_PAGE { HUGE_PAGE } else { LINE };
        let layout = Layout::from_size_align(bytes.next_multiple_of(align), align)
            .unwrap_or_else(|_| panic!("buffer of {len} f32 values exceeds the address space"));
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<f32>()) else {
            handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if align == HUGE_PAGE {
            // SAFETY: the range is this allocation. Only advice: failure changes nothing.
            unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `len` f32 values fit in the allocation; zeroing them touches the pages
        // after the advice.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Self { ptr, len, layout }
    }
}

impl Default for AlignedBuf {
    /// An empty buffer (no allocation).
    fn default() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            layout: Layout::new::<()>(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.layout.size() > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `len` initialised values owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in deref, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_aligned_and_cloned() {
        for len in [0, 1, 17, 600_000] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            let align = if len * 4 >= HUGE_PAGE {
                HUGE_PAGE
            } else {
                LINE
            };
            if len > 0 {
                b[len - 1] = 3.0;
                assert_eq!(b.as_ptr() as usize % align, 0, "len {len}");
            }
            let c = b.clone();
            assert_eq!(&c[..], &b[..]);
        }
    }
}
