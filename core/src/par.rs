//! Work splitting: rayon across cores with the `std` feature, a plain loop without it. Each chunk is computed
//! by exactly one closure call, so results do not depend on the number of threads.

/// Calls `f(i, chunk)` for each `chunk`-sized piece of `data` (the last may be shorter).
pub(crate) fn for_each_chunk<T: Send, F>(data: &mut [T], chunk: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Send + Sync,
{
    if chunk == 0 {
        return;
    }
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        // One chunk, or one thread: a plain loop, without handing the work to the pool and back.
        if data.len() <= chunk || rayon::current_num_threads() == 1 {
            data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
        } else {
            data.par_chunks_mut(chunk).with_max_len(1).enumerate().for_each(|(i, c)| f(i, c));
        }
    }
    #[cfg(not(feature = "std"))]
    {
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}
