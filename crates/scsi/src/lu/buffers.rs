//! READ data buffers reused from one command to the next.
//!
//! A 1 MiB READ used to allocate a fresh zeroed `Vec` per command: for sizes like that the allocator hands out
//! memory it has just returned to the kernel, so every read paid a 1 MiB memset and the page faults that map it
//! in again (a fifth of the target's CPU per 1 MiB read, measured with `perf`). Large buffers now come from a
//! small process-wide free list and go back to it when the transport is done with the Data-In
//! ([`recycle_data_in`], called when the last `Bytes` over it is dropped). A reused buffer is not zeroed:
//! [`BlockDevice::read_at`](crate::BlockDevice::read_at) fills all of it or fails, and a failed read sends no data.

use std::sync::Mutex;

/// READ buffers at least this long are reused; shorter ones are allocated as before (cheap, and in memory the allocator keeps mapped).
pub const POOLED_DATA_IN_BYTES: usize = 64 * 1024;
/// Capacity kept on the free list at most, all buffers together: the reads of a few deep queues at 1 MiB.
const MAX_POOLED_BYTES: usize = 32 << 20;

struct FreeList {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

static FREE: Mutex<FreeList> = Mutex::new(FreeList {
    buffers: Vec::new(),
    bytes: 0,
});

fn free_list() -> std::sync::MutexGuard<'static, FreeList> {
    // Every update is one push or pop with its byte count: consistent even if a holder panicked.
    FREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of exactly `len` bytes for READ data, to be filled entirely; its contents are unspecified (zeros, or
/// what an earlier READ left). `len` is bounded by the caller (at most a transfer of `MAX_TRANSFER_BLOCKS`).
pub(super) fn data_in_buffer(len: usize) -> Vec<u8> {
    if len < POOLED_DATA_IN_BYTES {
        return vec![0u8; len];
    }
    let reused = {
        let mut free = free_list();
        // One already written that far needs no zeroing; else one that at least needs no reallocation.
        let found = (free.buffers.iter().rposition(|b| b.len() >= len))
            .or_else(|| free.buffers.iter().rposition(|b| b.capacity() >= len));
        found.map(|i| {
            let b = free.buffers.swap_remove(i);
            free.bytes -= b.capacity();
            b
        })
    };
    match reused {
        Some(mut b) => {
            // A buffer comes back at the length it was last used at: only bytes beyond that are zeroed.
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// Gives a READ buffer back once nothing refers to its bytes any more; small ones and any beyond the free list's
/// bound are freed.
pub fn recycle_data_in(buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap < POOLED_DATA_IN_BYTES {
        return;
    }
    let mut free = free_list();
    if free.bytes + cap <= MAX_POOLED_BYTES {
        free.bytes += cap;
        free.buffers.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_at_the_asked_length_and_the_list_is_bounded() {
        let a = data_in_buffer(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        let ptr = a.as_ptr();
        recycle_data_in(a);
        // Other tests may use the list at the same time: look for ours among what comes back.
        let mut taken = Vec::new();
        let mut found = false;
        for _ in 0..64 {
            let b = data_in_buffer(512 * 1024);
            assert_eq!(b.len(), 512 * 1024);
            found |= b.as_ptr() == ptr;
            taken.push(b);
            if found {
                break;
            }
        }
        assert!(found, "the recycled buffer was handed out again");
        assert_eq!(data_in_buffer(100).len(), 100);
        for b in taken {
            recycle_data_in(b);
        }
        for _ in 0..(MAX_POOLED_BYTES >> 20) + 8 {
            recycle_data_in(vec![0u8; 1 << 20]);
        }
        assert!(free_list().bytes <= MAX_POOLED_BYTES);
    }
}
