//! The process's allocator: mimalloc, keeping the memory it frees for reuse.
//!
//! The request path allocates and frees many buffers across threads; glibc malloc spent a fifth of the CPU
//! in `vigil bench ingest` and fragmented the heap: mimalloc raised sustained ingest by about 9 % and cut peak
//! RSS by about 30 % there. It is built without transparent huge pages (`no_thp`): with them, every page it
//! took back from the OS was zeroed 2 MiB at a time.
//!
//! By default mimalloc hands memory that stayed free for a second back to the kernel, and Vigil's working set
//! turns over faster than that: each flush frees the write buffer's batches, Parquet's page buffers and the
//! WAL's encodings, and the next requests fault the same amount back in, a zeroed page at a time. On the
//! virtual machines Vigil is benchmarked on, a fresh page costs the hypervisor too: with purging on, page
//! faults and the `madvise` calls behind them were a tenth of `vigil bench ingest`'s CPU, and the same build
//! sustained 97,000-116,000 events/s against 148,000-168,000 with purging off, alternated on one host. So
//! Vigil keeps freed memory: RSS stays at its high-water mark (770-840 MiB there, against 550-570; 740-860
//! MiB at full rate with unique prompts, since detection left the blocking pool), which the write buffer (one
//! flush's worth of rows being written plus those arriving meanwhile) and `pipeline.max_in_flight` bound.
//! `MIMALLOC_PURGE_DELAY` in the environment still wins.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_t` (v2 and v3), which `libmimalloc-sys` does not name.
/// The test below checks it against the option's documented default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns mimalloc's purging off unless the environment chose a delay. Call it first thing in `main`,
/// before other threads allocate.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an option's value; -1 is documented as "no purging at all". It runs
        // before the runtime starts any thread, so no purge reads the option while it changes.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading an option's value.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // mimalloc v3's purge delay defaults to 1000 ms, and no other option does.
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
