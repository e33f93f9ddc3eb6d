// Recycled host buffers for large op outputs (pack_images' pixel_values, resize_images' pixels).
//
// Why: a fresh allocation of a few hundred MB is mmap'ed by the C allocator and every 4 KiB page faults on first
// touch. Measured on the 2-core CI-like VM: first write of 485 MB took 250-290 ms, a second write of the same
// buffer 20-25 ms, so a data loader that allocates a new pixel_values per batch spends ~10x more time faulting
// pages in than packing them. Freed blocks go back to a bounded pool and serve the next request they fit, the way
// torch's CUDA host allocator recycles pinned memory. The pool holds at most OMNI_MEGA_HOST_CACHE_MB (default 2048;
// 0 turns recycling off) of free blocks; requests under 1 MiB use torch's allocator.
#pragma once

#include <ATen/ATen.h>

namespace omni_mega {

// An uninitialized CPU tensor whose storage comes from (and returns to) the recycling pool.
at::Tensor empty_recycled(at::IntArrayRef sizes, at::ScalarType dtype);

// Bytes of free blocks the pool holds now (for tests and benchmarks).
int64_t host_cache_free_bytes();

// Frees every cached block.
void host_cache_clear();

}  // namespace omni_mega
