//! A length prefix of u32::MAX must be refused before anything is allocated
//! for it. A counting allocator records the largest single allocation; this
//! file holds one test so no other test's allocations blur the measure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use tfc_agent_proto::{FrameError, FrameKind, FrameReader};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; it only
// records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn a_huge_length_prefix_allocates_nothing_for_it() {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1, FrameKind::Stdout as u8, 0, 0, 0, 0, 0, 0, 0, 1]);
    // Followed by plenty of bytes, so a reader that trusted the prefix would
    // go on reading instead of failing on a short stream.
    bytes.resize(64 * 1024, 0);
    let mut reader = FrameReader::new(Cursor::new(bytes));
    LARGEST.store(0, Ordering::Relaxed);
    let result = reader.read_frame();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        matches!(result, Err(FrameError::FrameTooLarge { .. })),
        "{result:?}"
    );
    assert!(
        largest < 4096,
        "largest allocation while reading: {largest} bytes"
    );
}
